"""What every ``predictd`` sub-command shares: the consoles, the --config/--json options, settings and database."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from predictd.daemon.config import ConfigError, Settings, load_settings
from predictd.daemon.db import Database, DatabaseNotAtHead, sqlite_file

if TYPE_CHECKING:
    from predictd.daemon.audit import Auditor, AuditRecord

console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file.", envvar="PREDICTD_CONFIG", exists=True, dir_okay=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]
"""What ``--since``/``--until`` take; a time without a zone is UTC, as every time the CLI prints."""

root_config: dict[str, Path | None] = {"path": None}
"""The --config given before the sub-command (``predictd --config F queue ls``)."""


def config_path(config: Path | None) -> Path | None:
    """The config file a command reads: ``--config`` after the command, else before it, else PREDICTD_CONFIG."""
    return config or root_config["path"]


def settings_for(config: Path | None) -> Settings:
    try:
        return load_settings(config_path(config))
    except ConfigError as exc:
        fail(str(exc))


def utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, never wrapped (operators grep for it), and the exit code."""
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


def db_for(config: Path | None) -> Database:
    """The database of the command's settings, at the schema head (see :func:`open_db`)."""
    return open_db(settings_for(config), config)


def open_db(settings: Settings, config: Path | None = None) -> Database:
    """The database at the schema head; an SQLite file that does not exist is named, never created empty here
    (``db upgrade`` and ``serve`` create it)."""
    require_database_file(settings, config)
    db = Database(settings.database.url, sqlite_busy_timeout_ms=settings.database.sqlite_busy_timeout_ms)
    try:
        db.require_head()
    except DatabaseNotAtHead as exc:
        fail(str(exc))
    return db


def require_database_file(settings: Settings, config: Path | None) -> None:
    """An SQLite file that is not there: say which, and where the setting came from."""
    missing = sqlite_file(settings.database.url)
    if missing is None or missing.exists():
        return
    path = config_path(config)
    where = f"database.url in {path}" if path else "the default database.url: no --config or PREDICTD_CONFIG given"
    fail(f"no database at {missing} ({where}); point --config at your predictd.toml, or create it with "
         "`predictd db upgrade`")  # fmt: skip


def auditor_for(settings: Settings, db: Database) -> Auditor:
    """The audit trail an operator's command writes to, with the site's syslog copy when configured."""
    from predictd.daemon.audit import Auditor
    from predictd.daemon.syslog import SyslogSender

    return Auditor(db, SyslogSender(settings.audit.syslog) if settings.audit.syslog else None)


def audit_if_possible(settings: Settings, record: AuditRecord) -> None:
    """An operator action outside the queue (``models install``) goes into the trail when the database is there at
    the schema head; the command itself never fails for it (on a first install the database may not exist yet)."""
    path = sqlite_file(settings.database.url)
    if path is not None and not path.exists():
        return
    try:
        db = Database(settings.database.url, sqlite_busy_timeout_ms=settings.database.sqlite_busy_timeout_ms)
        db.require_head()
    except Exception:
        return
    auditor_for(settings, db).record(record)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
