"""The registry export: one row per patient, study and side, from the latest classified run of each study.

This module holds its own SQL, by design: it is a read-only report query (one SELECT, no writes, no claims), kept next
to the row shaping and the file writers so the whole export reads in one place. It never touches a study's state.

Which run: the latest run of a study whose ``classified_at`` is set; a run still being classified is not exported.

Why ``--since`` filters on that run's ``classified_at`` and not on ``studies.study_date``: a registry is built by
incremental exports ("everything that changed since my last export"). A study re-classified today (late instances,
``queue retry``, a new model) must come out again with its newer result, and an old study imported today (priors, a
backlog) must come out at all; ``study_date`` would miss both. ``study_date`` is also whatever the modality sent (may be
empty or malformed) and a local date without a time zone, whereas ``classified_at`` is a UTC timestamp we wrote.
``--since DATE`` means ``classified_at >= DATE 00:00 UTC``.

Types: ``study_date`` (DICOM DA, YYYYMMDD) becomes a ``datetime.date`` (ISO YYYY-MM-DD in CSV, ``date32`` in Parquet;
malformed or missing → empty/null); ``classified_at`` is a UTC datetime (ISO 8601 in CSV, ``timestamp[us, UTC]`` in
Parquet); probabilities are ``float64``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select

from predictd.daemon.db import Database
from predictd.daemon.tables import PredictionRow, Run, Study
from predictd.models.prediction import Prediction

REGISTRY_COLUMNS: dict[str, tuple[str, ...]] = {
    "body_part": ("body_part",),
    "hardware_type": ("hip_hardware", "hip_arthroplasty"),
    "implant_presence": ("implant_presence",),
    "implant_model": ("femoral_fixation_model", "shoulder_implant_manufacturer"),
    "fracture": ("hip_fracture",),
}
"""Registry column → the model tasks (models/catalog/*.json "task") that fill it; the only place this mapping lives.

For one column and one side, every prediction of any of its tasks is a candidate, and the highest-probability
non-indeterminate one wins (the rule of reporting/text.py); the winner's task and model are exported with it so the
label can be read against the right vocabulary. Predictions of tasks not listed here are not exported.
"""

FINDING_FIELDS = ("", "_probability", "_task", "_model", "_side")
"""Per registry column ``c``: ``c`` (the label, "indeterminate" or "not_assessed"), ``c_probability`` (empty when
not assessed), ``c_task``, ``c_model``
("name@version") and ``c_side`` (the laterality of the winning prediction: "R", "L", or "" when it was unsided and so
applies to every side row of the study)."""

KEY_COLUMNS = ("patient_id", "accession_number", "study_date", "study_uid", "run_no", "classified_at", "side")

COLUMNS: tuple[str, ...] = (
    *KEY_COLUMNS,
    *(f"{c}{suffix}" for c in REGISTRY_COLUMNS for suffix in FINDING_FIELDS),
    "model_versions",
)
"""Every export column, in the (stable) order of the CSV header and the Parquet schema."""

SIDES = ("R", "L")
_TASK_COLUMN = {task: column for column, tasks in REGISTRY_COLUMNS.items() for task in tasks}


class ExportFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    FHIR = "fhir"


@dataclass(frozen=True)
class _Pred:
    task: str
    label: str
    probability: float
    laterality: str | None
    model: str


@dataclass(frozen=True)
class _StudyRun:
    patient_id: str | None
    accession_number: str | None
    study_date: str | None
    study_uid: str
    run_no: int
    classified_at: datetime
    model_versions: str | None


def registry_rows(db: Database, *, since: date | None = None) -> list[dict[str, Any]]:
    """The export rows (keys: :data:`COLUMNS`), ordered by classified_at, study UID, then side R, L, ""."""
    latest = (
        select(Run.study_id, func.max(Run.run_no).label("run_no"))
        .where(Run.classified_at.is_not(None))
        .group_by(Run.study_id)
        .subquery()
    )
    stmt = (
        select(
            Run.id,
            Study.patient_id,
            Study.accession_number,
            Study.study_date,
            Study.study_uid,
            Run.run_no,
            Run.classified_at,
            Run.model_versions,
            PredictionRow.task,
            PredictionRow.label,
            PredictionRow.probability,
            PredictionRow.laterality,
            PredictionRow.model_name,
            PredictionRow.model_version,
        )
        .join(latest, latest.c.study_id == Study.id)
        .join(Run, (Run.study_id == latest.c.study_id) & (Run.run_no == latest.c.run_no))
        .outerjoin(PredictionRow, PredictionRow.run_id == Run.id)
        .order_by(Run.id, PredictionRow.id)
    )
    if since is not None:
        stmt = stmt.where(Run.classified_at >= datetime(since.year, since.month, since.day, tzinfo=UTC))
    runs: dict[int, tuple[_StudyRun, list[_Pred]]] = {}
    with db.transaction() as s:
        for r in s.execute(stmt):
            if r.id not in runs:
                head = _StudyRun(
                    r.patient_id,
                    r.accession_number,
                    r.study_date,
                    r.study_uid,
                    r.run_no,
                    r.classified_at,
                    r.model_versions,
                )
                runs[r.id] = (head, [])
            if r.task is not None:
                side = r.laterality.upper() if r.laterality and r.laterality.upper() in SIDES else None
                model = f"{r.model_name}@{r.model_version}"
                runs[r.id][1].append(_Pred(r.task, r.label, float(r.probability), side, model))
    rows = [row for head, preds in runs.values() for row in _study_rows(head, preds)]
    order = {"R": 0, "L": 1, "": 2}
    rows.sort(key=lambda row: (row["classified_at"], row["study_uid"], order[row["side"]]))
    return rows


def _study_rows(head: _StudyRun, preds: Sequence[_Pred]) -> list[dict[str, Any]]:
    """One study's rows: one per side that has a sided prediction, else a single row with side ""."""
    preds = [p for p in preds if p.task in _TASK_COLUMN]
    sides = [s for s in SIDES if any(p.laterality == s for p in preds)] or [""]
    rows = []
    for side in sides:
        row: dict[str, Any] = {
            "patient_id": head.patient_id,
            "accession_number": head.accession_number,
            "study_date": parse_da(head.study_date),
            "study_uid": head.study_uid,
            "run_no": head.run_no,
            "classified_at": head.classified_at,
            "side": side,
        }
        for column in REGISTRY_COLUMNS:
            candidates = [
                p for p in preds if _TASK_COLUMN[p.task] == column and (p.laterality is None or p.laterality == side)
            ]
            row.update(_finding(column, candidates))
        row["model_versions"] = head.model_versions
        rows.append(row)
    return rows


def _finding(column: str, candidates: Sequence[_Pred]) -> dict[str, Any]:
    """The winning prediction for one column and side.

    None decided: "not_assessed" (without probability: it would belong to a class the model may not name) when the
    domain gate refused every candidate, else "indeterminate" at the top probability.
    """
    if not candidates:
        return {f"{column}{suffix}": None for suffix in FINDING_FIELDS}
    undecided = (Prediction.INDETERMINATE, Prediction.NOT_ASSESSED)
    decided = [p for p in candidates if p.label not in undecided]
    refused = not decided and all(p.label == Prediction.NOT_ASSESSED for p in candidates)
    best = max(decided or candidates, key=lambda p: p.probability)
    label = best.label if decided else (Prediction.NOT_ASSESSED if refused else Prediction.INDETERMINATE)
    if not decided and not refused:
        best = max((p for p in candidates if p.label == Prediction.INDETERMINATE), key=lambda p: p.probability)
    return {
        column: label,
        f"{column}_probability": None if refused else best.probability,
        f"{column}_task": best.task,
        f"{column}_model": best.model,
        f"{column}_side": best.laterality or "",
    }


def parse_da(value: str | None) -> date | None:
    """DICOM DA "YYYYMMDD" → date; empty or malformed (as modalities sometimes send) → None."""
    value = (value or "").strip()
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


# --- writers -------------------------------------------------------------------------------------------------------


def write_csv(rows: Iterable[Mapping[str, Any]], out: IO[str]) -> None:
    """CSV with a header row in :data:`COLUMNS` order; None → empty field, dates and datetimes → ISO 8601."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(_csv_value(row[c]) for c in COLUMNS)


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, date):  # datetime too
        return value.isoformat()
    return value


def parquet_schema() -> Any:
    """The declared Parquet schema (pyarrow.Schema): strings, int32 run_no, date32 study_date, UTC timestamps,
    float64 probabilities."""
    import pyarrow as pa

    fields = [
        pa.field("patient_id", pa.string()),
        pa.field("accession_number", pa.string()),
        pa.field("study_date", pa.date32()),
        pa.field("study_uid", pa.string(), nullable=False),
        pa.field("run_no", pa.int32(), nullable=False),
        pa.field("classified_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("side", pa.string(), nullable=False),
    ]
    for column in REGISTRY_COLUMNS:
        for suffix in FINDING_FIELDS:
            kind = pa.float64() if suffix == "_probability" else pa.string()
            fields.append(pa.field(f"{column}{suffix}", kind))
    fields.append(pa.field("model_versions", pa.string()))
    return pa.schema(fields)


def write_parquet(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One Parquet file with :func:`parquet_schema` (an empty export still has the schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    table = pa.Table.from_pylist([{c: row[c] for c in COLUMNS} for row in rows], schema=schema)
    pq.write_table(table, path)


def write_fhir(rows: Sequence[Mapping[str, Any]], out: IO[str]) -> None:
    """A FHIR Bundle (see reporting/fhir.py) as JSON."""
    from predictd.reporting.fhir import bundle_json

    out.write(bundle_json(rows) + "\n")


__all__ = [
    "COLUMNS",
    "FINDING_FIELDS",
    "KEY_COLUMNS",
    "REGISTRY_COLUMNS",
    "ExportFormat",
    "parquet_schema",
    "parse_da",
    "registry_rows",
    "write_csv",
    "write_fhir",
    "write_parquet",
]
