"""The ``predictd`` command: serve, db, queue, registry, echo; ``models`` from daemon/cli_models.py; dataset, train,
calibrate, export and evaluate from daemon/cli_training.py and daemon/cli_evaluate.py.

Tables for people (rich), ``--json`` for scripts, ``--config FILE`` on every command (or once before the command,
or PREDICTD_CONFIG in the environment).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from predictd.daemon import audit, cli_admin, cli_evaluate, cli_models, cli_training, queue, views
from predictd.daemon.audit import Outcome
from predictd.daemon.cli_common import (
    TIME_FORMATS,
    ConfigOption,
    JsonOption,
    auditor_for,
    config_path,
    console,
    db_for,
    fail,
    open_db,
    print_json,
    require_database_file,
    root_config,
    settings_for,
    utc,
)
from predictd.daemon.db import Database, DatabaseNotAtHead
from predictd.daemon.lifecycle import IllegalTransition, StudyState
from predictd.daemon.log import configure_logging
from predictd.daemon.registry import ExportFormat

app = typer.Typer(help="predictd: pre-dictation daemon for radiographs.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
queue_app = typer.Typer(help="Inspect and steer the study queue.", no_args_is_help=True)
registry_app = typer.Typer(help="Exports for patient registries.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(queue_app, name="queue")
app.add_typer(registry_app, name="registry")
app.add_typer(cli_models.models_app, name="models")
app.add_typer(cli_admin.audit_app, name="audit")
app.add_typer(cli_admin.config_app, name="config")
app.command("dataset")(cli_training.dataset)
app.command("train")(cli_training.train)
app.command("evaluate")(cli_evaluate.evaluate)
app.command("export")(cli_training.export)
app.command("calibrate")(cli_training.calibrate)

PRIVATE_UMASK = 0o077
"""Files predictd writes (spool, database, outbox, logs it opens) hold patient data: 0600 files, 0700 folders."""


@app.callback()
def main(config: ConfigOption = None) -> None:
    root_config["path"] = config
    os.umask(PRIVATE_UMASK)


# --- serve, db ---------------------------------------------------------------------------------------------------


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the daemon: DICOM receiver, workers and periodic jobs, until SIGTERM or Ctrl-C."""
    from predictd.daemon.app import App, StartError  # the app imports torch when it starts, not before

    settings = settings_for(config)
    configure_logging(settings.log.level, settings.log.json_output)
    try:
        application = App(settings, config_path(config))
    except DatabaseNotAtHead as exc:
        fail(str(exc))
    try:
        application.run_forever()
    except StartError as exc:  # a port in use, a certificate that does not load, two models of one name
        fail(str(exc))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, revision: str = "head") -> None:
    """Create or migrate the database schema to the version this predictd needs."""
    settings = settings_for(config)
    db = Database(settings.database.url)
    before = db.current_revision()
    db.upgrade(revision)
    after = db.current_revision()
    if after != before and after == db.head_revision():  # the trail exists from 0008 on
        auditor_for(settings, db).record(audit.operator_action("db upgrade", from_revision=before, to_revision=after))
    console.print(f"database at {after}")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Show the schema revision of the database and the one this predictd needs."""
    settings = settings_for(config)
    require_database_file(settings, config)
    db = Database(settings.database.url)
    console.print(f"database: {db.current_revision() or 'empty'}; needed: {db.head_revision()}")


# --- queue -------------------------------------------------------------------------------------------------------

LIST_COLUMNS = ("study_uid", "state", "run_no", "modality", "instances", "attempts", "updated_at", "reason")


IDENTIFIER_COLUMNS = ("accession_number", "patient_id", "study_date")


@queue_app.command("ls")
def queue_ls(
    config: ConfigOption = None,
    state: Annotated[StudyState | None, typer.Option(help="Only studies in this state.")] = None,
    accession: Annotated[str | None, typer.Option("--accession", help="Only this accession number.")] = None,
    patient_id: Annotated[str | None, typer.Option("--patient-id", help="Only this patient ID.")] = None,
    modality: Annotated[str | None, typer.Option(help="Only this modality (CR, DX ...).")] = None,
    since: Annotated[
        datetime | None, typer.Option(formats=TIME_FORMATS, help="Received at or after (UTC, YYYY-MM-DD[ HH:MM]).")
    ] = None,
    until: Annotated[datetime | None, typer.Option(formats=TIME_FORMATS, help="Received before (UTC).")] = None,
    identifiers: Annotated[
        bool, typer.Option("--identifiers", help="Show accession number, patient ID and study date (PHI).")
    ] = False,
    limit: int = 100,
    as_json: JsonOption = False,
) -> None:
    """List studies, most recently changed first. The patient's identifiers are shown with --identifiers, or
    when a filter already names them; they are never logged."""
    where = views.StudyFilter(state, accession, patient_id, modality, utc(since), utc(until))
    show = identifiers or bool(accession or patient_id)
    rows = views.list_studies(db_for(config), limit=limit, where=where, identifiers=show)
    if as_json:
        print_json(rows)
        return
    columns = LIST_COLUMNS + (IDENTIFIER_COLUMNS if show else ())
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c]) if row[c] is not None else "" for c in columns))
    console.print(table)


@queue_app.command("show")
def queue_show(study_uid: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """One study: instances, state history, predictions, SR UID, deliveries."""
    detail = views.study_detail(db_for(config), study_uid)
    if detail is None:
        fail(f"no study {study_uid}", 1)
    if as_json:
        print_json(detail)
        return
    _show_human(detail)


def _show_human(detail: dict[str, Any]) -> None:
    console.print(f"[bold]{detail['study_uid']}[/bold]  {detail['state']}  run {detail['run_no']}")
    if detail["reason"]:
        console.print(f"reason: {detail['reason']}")
    instances = Table("sop_instance_uid", "transfer_syntax_uid", "size_bytes", "run_no", title="instances")
    for i in detail["instances_detail"]:
        instances.add_row(i["sop_instance_uid"], i["transfer_syntax_uid"], str(i["size_bytes"]), str(i["run_no"]))
    console.print(instances)
    events = Table("at", "run", "event", "actor", "reason", title="history")
    for e in detail["events"]:
        events.add_row(e["at"], str(e["run_no"]), e["event"], e["actor"] or "", e["reason"] or "")
    console.print(events)
    for run in detail["runs"]:
        console.print(
            f"[bold]run {run['run_no']}[/bold]  models {run['model_versions']}  SR {run['sr_sop_instance_uid']}"
        )
        preds = Table("sop_instance_uid", "model", "label", "probability", "side", title="predictions")
        for p in run["predictions"]:
            preds.add_row(
                p["sop_instance_uid"],
                p["model"],
                p["label"],
                f"{p['probability']:.2f}",
                p["laterality"] or "",
            )
        console.print(preds)
        dels = Table("destination", "state", "attempts", "sent_at", "last_error", title="deliveries")
        for d in run["deliveries"]:
            dels.add_row(d["destination"], d["state"], str(d["attempts"]), d["sent_at"] or "", d["last_error"] or "")
        console.print(dels)
        if run["report_text"]:
            console.print(run["report_text"])


@contextmanager
def _operator_action(config: Path | None, command: str, study_uid: str) -> Iterator[tuple[Database, dict[str, Any]]]:
    """The database for an operator's change to one study, and its audit record (refusals too): an unknown study or
    a move the state machine forbids ends the command with a message and exit code 1."""
    settings = settings_for(config)
    db = open_db(settings, config)
    auditor = auditor_for(settings, db)
    detail: dict[str, Any] = {}
    try:
        yield db, detail
    except (queue.UnknownStudy, IllegalTransition) as exc:
        reason = f"no study {study_uid}" if isinstance(exc, queue.UnknownStudy) else str(exc)
        auditor.record(audit.operator_action(command, study_uid=study_uid, outcome=Outcome.REFUSED, reason=reason))
        fail(reason, 1)
    auditor.record(audit.operator_action(command, study_uid=study_uid, **detail))


@queue_app.command("retry")
def queue_retry(study_uid: str, config: ConfigOption = None) -> None:
    """Run an ended (done, failed, skipped, cancelled) study again, as a new run."""
    with _operator_action(config, "queue retry", study_uid) as (db, detail):
        detail["run_no"] = run_no = queue.retry(db, study_uid)
    console.print(f"{study_uid}: queued again as run {run_no}")


@queue_app.command("cancel")
def queue_cancel(study_uid: str, config: ConfigOption = None) -> None:
    """Stop a study wherever it is; a worker holding it writes nothing more."""
    with _operator_action(config, "queue cancel", study_uid) as (db, _detail):
        queue.cancel(db, study_uid)
    console.print(f"{study_uid}: cancelled")


@queue_app.command("stats")
def queue_stats(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Studies per state, deliveries per state, and how long the oldest waiting study has waited."""
    db = db_for(config)
    studies = {str(s): 0 for s in StudyState} | views.counts_by_state(db)
    deliveries = views.delivery_counts(db)
    oldest = views.oldest_waiting_seconds(db)
    if as_json:
        print_json({"studies": studies, "deliveries": deliveries, "oldest_waiting_seconds": oldest})
        return
    table = Table("state", "studies")
    for state, n in studies.items():
        table.add_row(state, str(n))
    console.print(table)
    console.print(f"deliveries: {deliveries or 'none'}")
    console.print("oldest waiting: " + ("none" if oldest is None else f"{oldest:.0f} s"))


# --- registry ----------------------------------------------------------------------------------------------------


@registry_app.command("export")
def registry_export(
    config: ConfigOption = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="csv, parquet or fhir (an R5 Bundle).")] = (
        ExportFormat.CSV
    ),
    since: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Only studies classified on or after this UTC date (YYYY-MM-DD)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", dir_okay=False, help="File to write; default stdout.")
    ] = None,
) -> None:
    """One row per patient, study and side from each study's latest classified run (see daemon/registry.py)."""
    from predictd.daemon import registry

    if fmt is ExportFormat.PARQUET and output is None:
        fail("--format parquet needs --output FILE")
    rows = registry.registry_rows(db_for(config), since=since.date() if since else None)
    writer = registry.write_csv if fmt is ExportFormat.CSV else registry.write_fhir
    if output is None:
        writer(rows, sys.stdout)
        return
    if fmt is ExportFormat.PARQUET:
        registry.write_parquet(rows, output)
    else:
        with output.open("w", encoding="utf-8", newline="") as f:
            writer(rows, f)
    console.print(f"wrote {len(rows)} rows ({fmt}) to {output}")


# --- network -----------------------------------------------------------------------------------------------------


@app.command()
def echo(
    host: Annotated[str | None, typer.Argument(help="The peer's host; default receive.host (predictd itself).")] = None,
    port: Annotated[int | None, typer.Argument(help="The peer's port; default receive.port.")] = None,
    config: ConfigOption = None,
    aet: Annotated[str | None, typer.Option(help="Our (calling) AE title; default receive.ae_title.")] = None,
    aec: Annotated[
        str | None,
        typer.Option(help="The peer's (called) AE title; default receive.ae_title on our own port, else ANY-SCP."),
    ] = None,
    destination: Annotated[
        str | None, typer.Option("--destination", "-d", help="C-ECHO a configured DICOM destination (its TLS too).")
    ] = None,
) -> None:
    """C-ECHO a DICOM peer (a PACS, predictd itself, or a configured destination) and print the status."""
    from predictd.daemon.config_send import DicomDestination
    from predictd.daemon.destinations import SendError
    from predictd.daemon.destinations.dicom import echo as dicom_echo

    settings = settings_for(config)
    receive, tls_settings, tls_name = settings.receive, None, "tls"
    if destination is not None:
        dest = next((d for d in settings.send.destinations if d.name == destination), None)
        if not isinstance(dest, DicomDestination):
            known = [d.name for d in settings.send.destinations if isinstance(d, DicomDestination)]
            fail(f"no DICOM destination named {destination!r} in send.destinations (DICOM ones: {known})", 1)
        host, port, aec = dest.host, dest.port, aec or dest.ae_title
        aet, tls_settings, tls_name = aet or dest.calling_ae_title, dest.tls, f"send.destinations[{dest.name}].tls"
    host = host or receive.host
    port = port if port is not None else receive.port
    ours = port == receive.port and host in (receive.host, "127.0.0.1", "localhost", "::1")
    called = aec or (receive.ae_title if ours else "ANY-SCP")
    calling = aet or receive.ae_title
    try:
        status = dicom_echo(host, port, called, calling, 10, tls_settings, tls_name)
    except SendError as exc:
        fail(str(exc), 1)
    console.print(f"C-ECHO {host}:{port} ({called}): status 0x{status:04X}")
    if status != 0:
        raise typer.Exit(1)
