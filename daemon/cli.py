"""The ``predictd`` command: serve, db, queue, registry, echo, models (and, from daemon/cli_training.py, dataset, train,
evaluate, export).

Tables for people (rich), ``--json`` for scripts, ``--config FILE`` on every command (or once before the command,
or PREDICTD_CONFIG in the environment).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from daemon import cli_evaluate, cli_training, queue, views
from daemon.config import ConfigError, Settings, load_settings
from daemon.db import Database, DatabaseNotAtHead
from daemon.lifecycle import IllegalTransition, StudyState
from daemon.log import configure_logging
from daemon.registry import ExportFormat

app = typer.Typer(help="predictd: pre-dictation daemon for radiographs.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
queue_app = typer.Typer(help="Inspect and steer the study queue.", no_args_is_help=True)
models_app = typer.Typer(help="Installed models.", no_args_is_help=True)
registry_app = typer.Typer(help="Exports for patient registries.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(queue_app, name="queue")
app.add_typer(registry_app, name="registry")
app.add_typer(models_app, name="models")
app.command("dataset")(cli_training.dataset)
app.command("train")(cli_training.train)
app.command("evaluate")(cli_evaluate.evaluate)
app.command("export")(cli_training.export)
app.command("calibrate")(cli_training.calibrate)

console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file.", envvar="PREDICTD_CONFIG", exists=True, dir_okay=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

_root_config: dict[str, Path | None] = {"path": None}


PRIVATE_UMASK = 0o077
"""Files predictd writes (spool, database, outbox, logs it opens) hold patient data: 0600 files, 0700 folders."""


@app.callback()
def main(config: ConfigOption = None) -> None:
    _root_config["path"] = config
    os.umask(PRIVATE_UMASK)


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config or _root_config["path"])
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")  # one line, never wrapped: operators grep for it
        raise typer.Exit(2) from None


def _db(settings: Settings) -> Database:
    db = Database(settings.database.url, sqlite_busy_timeout_ms=settings.database.sqlite_busy_timeout_ms)
    try:
        db.require_head()
    except DatabaseNotAtHead as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    return db


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# --- serve, db ---------------------------------------------------------------------------------------------------


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the daemon: DICOM receiver, workers and periodic jobs, until SIGTERM or Ctrl-C."""
    from daemon.app import App  # imports torch: only the commands that need it pay for it

    settings = _settings(config)
    configure_logging(settings.log.level, settings.log.json_output)
    try:
        application = App(settings)
    except DatabaseNotAtHead as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    application.run_forever()


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None, revision: str = "head") -> None:
    """Create or migrate the database schema to the version this predictd needs."""
    settings = _settings(config)
    db = Database(settings.database.url)
    db.upgrade(revision)
    console.print(f"database at {db.current_revision()}")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Show the schema revision of the database and the one this predictd needs."""
    db = Database(_settings(config).database.url)
    console.print(f"database: {db.current_revision() or 'empty'}; needed: {db.head_revision()}")


# --- queue -------------------------------------------------------------------------------------------------------

LIST_COLUMNS = ("study_uid", "state", "run_no", "modality", "instances", "attempts", "updated_at", "reason")


@queue_app.command("ls")
def queue_ls(
    config: ConfigOption = None,
    state: Annotated[StudyState | None, typer.Option(help="Only studies in this state.")] = None,
    limit: int = 100,
    as_json: JsonOption = False,
) -> None:
    """List studies, most recently changed first."""
    rows = views.list_studies(_db(_settings(config)), state=state, limit=limit)
    if as_json:
        _print_json(rows)
        return
    table = Table()
    for column in LIST_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c]) if row[c] is not None else "" for c in LIST_COLUMNS))
    console.print(table)


@queue_app.command("show")
def queue_show(study_uid: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """One study: instances, state history, predictions, SR UID, deliveries."""
    detail = views.study_detail(_db(_settings(config)), study_uid)
    if detail is None:
        err.print(f"[red]error:[/red] no study {study_uid}")
        raise typer.Exit(1)
    if as_json:
        _print_json(detail)
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
    events = Table("at", "run", "from", "to", "actor", "reason", title="history")
    for e in detail["events"]:
        events.add_row(e["at"], str(e["run_no"]), e["from"] or "", e["to"], e["actor"] or "", e["reason"] or "")
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
def _operator_errors(study_uid: str) -> Iterator[None]:
    """Unknown studies and moves the state machine forbids end the command with a message and exit code 1."""
    try:
        yield
    except queue.UnknownStudy as exc:
        err.print(f"[red]error:[/red] no study {study_uid}")
        raise typer.Exit(1) from exc
    except IllegalTransition as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


@queue_app.command("retry")
def queue_retry(study_uid: str, config: ConfigOption = None) -> None:
    """Run an ended (done, failed, skipped, cancelled) study again, as a new run."""
    db = _db(_settings(config))
    with _operator_errors(study_uid):
        run_no = queue.retry(db, study_uid)
    console.print(f"{study_uid}: queued again as run {run_no}")


@queue_app.command("cancel")
def queue_cancel(study_uid: str, config: ConfigOption = None) -> None:
    """Stop a study wherever it is; a worker holding it writes nothing more."""
    db = _db(_settings(config))
    with _operator_errors(study_uid):
        queue.cancel(db, study_uid)
    console.print(f"{study_uid}: cancelled")


@queue_app.command("stats")
def queue_stats(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Studies per state, deliveries per state, and how long the oldest waiting study has waited."""
    db = _db(_settings(config))
    studies = {str(s): 0 for s in StudyState} | queue.counts_by_state(db)
    deliveries = queue.delivery_counts(db)
    oldest = queue.oldest_waiting_seconds(db)
    if as_json:
        _print_json({"studies": studies, "deliveries": deliveries, "oldest_waiting_seconds": oldest})
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
    from daemon import registry

    if fmt is ExportFormat.PARQUET and output is None:
        err.print("[red]error:[/red] --format parquet needs --output FILE")
        raise typer.Exit(2)
    rows = registry.registry_rows(_db(_settings(config)), since=since.date() if since else None)
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
    host: str,
    port: int,
    config: ConfigOption = None,
    aet: Annotated[str | None, typer.Option(help="Our (calling) AE title; default receive.ae_title.")] = None,
    aec: Annotated[str, typer.Option(help="The peer's (called) AE title.")] = "ANY-SCP",
) -> None:
    """C-ECHO a DICOM peer (a PACS, or predictd itself) and print the status."""
    from daemon.dimse import SendError
    from daemon.dimse import echo as dicom_echo

    calling = aet or _settings(config).receive.ae_title
    try:
        status = dicom_echo(host, port, aec, calling_ae=calling)
    except SendError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"C-ECHO {host}:{port} ({aec}): status 0x{status:04X}")
    if status != 0:
        raise typer.Exit(1)


# --- models ------------------------------------------------------------------------------------------------------


@models_app.command("install-demo")
def models_install_demo(
    config: ConfigOption = None,
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Do nothing when any model is installed.")] = False,
) -> None:
    """Install an UNTRAINED demonstration model (its reports say its findings are meaningless)."""
    from models.card import find_cards
    from models.demo import install_demo

    models_dir = _settings(config).models.dir
    if if_missing and find_cards(models_dir):
        console.print(f"models already installed in {models_dir}")
        return
    card = install_demo(models_dir)
    console.print(f"installed {card.name}@{card.version} (untrained demonstration) in {models_dir}")


@models_app.command("install")
def models_install(
    models: Annotated[
        list[str] | None, typer.Argument(help="Shipped model names (default: every shipped model).")
    ] = None,
    config: ConfigOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an installed model of the same name.")] = False,
) -> None:
    """Install the models that ship with predictd (trained by the project; see `predictd models shipped`)."""
    from models.card import CardError
    from models.install import install_shipped

    models_dir = _settings(config).models.dir
    try:
        installed = install_shipped(models_dir, models or (), overwrite=overwrite)
    except CardError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    for card in installed:
        console.print(f"installed {card.name}@{card.version} in {models_dir}")
    if not installed:
        console.print(f"nothing to install: already in {models_dir} (--overwrite replaces them)")


@models_app.command("shipped")
def models_shipped(as_json: JsonOption = False) -> None:
    """Models trained by this project and shipped with it, with the accuracy measured on their own test split."""
    from models.card import ModelCard
    from models.install import shipped

    rows = []
    for name, path in sorted(shipped().items()):
        card = ModelCard.load(path)
        test = card.training.get("metrics", {}).get("test", {})
        accuracy = test.get("accuracy", {})
        rows.append(
            {
                "name": name,
                "version": card.version,
                "arch": card.arch,
                "input_size": card.preprocessing.input_size,
                "labels": card.label_keys,
                "test_n": test.get("n"),
                "test_accuracy": accuracy.get("value"),
                "test_accuracy_ci": accuracy.get("ci"),
                "test_ece": test.get("ece"),
                **_gate_figures(card),
            }
        )
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "version", "arch", "test n", "test accuracy (95% CI)", "ECE", "gate coverage", "OOD refused")
    for r in rows:
        low, high = r["test_accuracy_ci"] or [None, None]
        shown = _three(r["test_accuracy"])
        if low is not None and high is not None:
            shown += f" ({low:.3f}–{high:.3f})"
        refused = _three(r["ood_refused"])
        if r["ood_n"]:
            refused += f" of {r['ood_n']}, {r['ood_labelled_confident']} labelled ≥ 0.9"
        table.add_row(
            r["name"], r["version"], r["arch"], str(r["test_n"]), shown, _three(r["test_ece"]),
            _three(r["gate_test_coverage"]), refused,
        )  # fmt: skip
    console.print(table)


def _three(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _gate_figures(card: Any) -> dict[str, Any]:
    """The domain gate's measured figures from a card (``predictd evaluate --ood --record``)."""
    evaluation = card.gate.get("evaluation", {}) if card.gated else {}
    ood = evaluation.get("ood", {})
    return {
        "gate": card.gate.get("method") if card.gated else None,
        "gate_test_coverage": evaluation.get("test_coverage"),
        "ood_n": ood.get("n"),
        "ood_refused": ood.get("refused"),
        "ood_labelled_confident": ood.get("labelled_confident"),
    }


@models_app.command("ls")
def models_ls(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Model cards found in the models directory."""
    from models.card import ModelCard, find_cards

    settings = _settings(config)
    folders = find_cards(settings.models.dir)
    cards = [ModelCard.load(p) for p in folders]
    rows = [
        {
            "name": c.name,
            "version": c.version,
            "task": c.task,
            "arch": c.arch,
            "labels": len(c.labels),
            "untrained": c.untrained,
            "gated": c.gated,
            "enabled": not settings.models.enabled or c.name in settings.models.enabled,
        }
        for c in cards
    ]
    if as_json:
        _print_json(rows)
    else:
        table = Table("name", "version", "task", "arch", "labels", "untrained", "gated", "enabled")
        for r in rows:
            table.add_row(*(str(v) for v in r.values()))
        console.print(table)
    seen: dict[str, Path] = {}
    clashes = []
    for folder, card in zip(folders, cards, strict=True):
        if card.name in seen:
            clashes.append(f"model name {card.name!r} is used by both {seen[card.name]} and {folder}")
        seen.setdefault(card.name, folder)
    for clash in clashes:
        err.print(f"[red]error:[/red] {clash}: the daemon will not start; rename one (`predictd train --name`)")
    if clashes:
        raise typer.Exit(1)


@models_app.command("explain")
def models_explain(
    dicom_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A DICOM image.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Name of an installed model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")],
    config: ConfigOption = None,
    label: Annotated[str | None, typer.Option(help="Label to explain; default the predicted one.")] = None,
) -> None:
    """Grad-CAM of one model on one image, as a PNG overlay a person can look at."""
    import pydicom

    from models.explain import overlay_png
    from models.inference import Engine
    from models.preprocess import to_gray

    settings = _settings(config)
    ds = pydicom.dcmread(dicom_file)
    with Engine.load(settings.models.dir, [model], device=settings.models.device) as engine:
        card = next(c for c in engine.cards if c.name == model)
        heat = engine.explain(ds, model, label)
        prediction = next(p for p in engine.predict([ds]) if p.model_name == model)
    overlay_png(to_gray(ds, card.preprocessing.window), heat, out)
    console.print(
        f"{model}: {prediction.label} ({prediction.probability:.2f}); heat map of {label or prediction.label} → {out}"
    )


@models_app.command("catalog")
def models_catalog(as_json: JsonOption = False) -> None:
    """Card templates for every task predictd knows (train weights for them with the toolkit)."""
    from models.catalog import catalog

    rows = [
        {
            "task": task,
            "arch": card.arch,
            "input_size": card.preprocessing.input_size,
            "labels": card.label_keys,
            "body_parts": list(card.applies_to.body_parts),
            "bilateral": card.bilateral,
            "role": card.role,
        }
        for task, card in catalog().items()
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table("task", "arch", "input_size", "labels", "body_parts", "bilateral", "role")
    for r in rows:
        table.add_row(*(", ".join(v) if isinstance(v, list) else str(v) for v in r.values()))
    console.print(table)
