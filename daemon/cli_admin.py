"""``predictd audit ls`` and ``predictd config check``: what an IT or privacy review asks of a running site."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from predictd.daemon.cli_common import (
    TIME_FORMATS,
    ConfigOption,
    JsonOption,
    console,
    db_for,
    fail,
    print_json,
    settings_for,
    utc,
)
from predictd.daemon.config import Settings

audit_app = typer.Typer(help="The audit trail: associations, instances, documents sent, operator actions.")
config_app = typer.Typer(help="Check a configuration file.", no_args_is_help=True)

MASK = "********"


@audit_app.command("ls")
def audit_ls(
    config: ConfigOption = None,
    since: Annotated[
        datetime | None, typer.Option(formats=TIME_FORMATS, help="Records at or after (UTC, YYYY-MM-DD[ HH:MM]).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind (association, instance_received ...).")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Only records of this Study Instance UID.")] = None,
    limit: int = 200,
    as_json: JsonOption = False,
) -> None:
    """Audit records, newest first."""
    from predictd.daemon.audit import AuditKind, recent

    if kind is not None and kind not in set(AuditKind):
        fail(f"unknown audit kind {kind!r}; one of {[str(k) for k in AuditKind]}")
    rows = recent(db_for(config), since=utc(since), kind=kind, study_uid=study, limit=limit)
    if as_json:
        print_json(rows)
        return
    for r in rows:  # one line a record, whole (a table folds UIDs into unreadable columns on a terminal)
        at = r["at"][:19].replace("T", " ")
        where = f" {r['peer']}" if r["peer"] else ""
        study = f" study={r['study_uid']}" if r["study_uid"] else ""
        detail = " ".join(f"{k}={v}" for k, v in r["detail"].items())
        console.print(
            f"{at} {r['kind']} {r['outcome']} {r['actor']}{where}{study} {detail}", highlight=False, soft_wrap=True
        )


@config_app.command("check")
def config_check(
    config: ConfigOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the verdict, not the effective settings.")] = False,
) -> None:
    """Validate a config file (unknown keys, types, TLS files, templates) and print the effective settings, with
    the environment's overrides applied and secrets masked. Exit 0 when it loads, 2 when not."""
    settings = settings_for(config)  # unknown keys, types and templates: one line and exit 2
    problems = _check_tls_files(settings)
    if problems:
        for problem in problems[1:]:
            console.print(f"error: {problem}", style="red", highlight=False, soft_wrap=True)
        fail(problems[0])
    if not quiet:
        print_json(masked(settings))
    source = config or "the defaults (no --config)"
    console.print(f"ok: {source} loads", style="green", highlight=False, soft_wrap=True)


def _check_tls_files(settings: Settings) -> list[str]:
    """Every certificate, key and CA bundle the settings name, loaded as predictd will load them."""
    from predictd.daemon import tls

    checks: list[tuple[Any, str]] = []
    if settings.receive.tls is not None:
        receive_tls = settings.receive.tls
        checks.append((lambda: tls.server_context(receive_tls), "receive.tls"))
    for dest in settings.send.destinations:
        if dest.tls is not None:
            name = f"send.destinations[{dest.name}].tls"
            checks.append((lambda d=dest, n=name: tls.client_context(d.tls, n), name))
    syslog = settings.audit.syslog
    if syslog is not None and syslog.protocol == "tls":
        checks.append((lambda: tls.client_context(syslog.tls, "audit.syslog.tls"), "audit.syslog.tls"))
    problems = []
    for check, _name in checks:
        try:
            check()
        except tls.TlsConfigError as exc:
            problems.append(str(exc))
    return problems


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as JSON values, with passwords, header values and a database URL's password masked."""
    from predictd.daemon.db import masked_url

    data = settings.model_dump(mode="json")
    data["database"]["url"] = masked_url(settings.database.url)
    for dest in data["send"]["destinations"]:
        if dest.get("password"):
            dest["password"] = MASK
        if dest.get("headers"):
            dest["headers"] = dict.fromkeys(dest["headers"], MASK)
    return data
