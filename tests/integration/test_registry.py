"""The registry export on real SQLite and PostgreSQL: row shaping, the three file formats, and the CLI command.

Studies, runs and predictions are written as rows directly (receive does not fill patient_id, accession_number and
study_date yet), so each case states exactly what the export sees.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fhir.resources.bundle import Bundle
from fhir.resources.diagnosticreport import DiagnosticReport
from fhir.resources.observation import Observation
from typer.testing import CliRunner

from predictd.daemon.cli import app
from predictd.daemon.db import Database
from predictd.daemon.registry import (
    COLUMNS,
    REGISTRY_COLUMNS,
    parquet_schema,
    registry_rows,
    write_csv,
    write_fhir,
    write_parquet,
)
from predictd.daemon.tables import PredictionRow, Run, Study
from predictd.models.prediction import Prediction
from predictd.reporting.fhir import LATERALITY, TASK_SYSTEM, bundle_json, label_system

T0 = datetime(2024, 5, 2, 9, 30, tzinfo=UTC)
_uids = itertools.count(1)
MODELS = {
    "body_part": ("bp", "1.0"),
    "hip_hardware": ("hiphw", "2.1"),
    "hip_arthroplasty": ("tha", "1.3"),
    "hip_fracture": ("fx", "0.9"),
    "implant_presence": ("implant", "1.0"),
}


def pred(task: str, label: str, probability: float, side: str | None = None) -> Prediction:
    name, version = MODELS[task]
    return Prediction(
        model_name=name,
        model_version=version,
        task=task,
        sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{next(_uids)}",
        series_instance_uid="1.2.826.0.1.3680043.8.498.9",
        label=label,
        probability=probability,
        probabilities={label: probability},
        laterality=side,
    )


def add_study(
    db: Database,
    runs: Sequence[tuple[datetime | None, Sequence[Prediction]]],
    *,
    patient_id: str | None = "P0001",
    accession: str | None = "ACC0001",
    study_date: str | None = "20240501",
) -> str:
    """A study with one run per (classified_at, predictions); returns its UID."""
    uid = f"1.2.826.0.1.3680043.8.498.1{next(_uids)}"
    with db.transaction() as s:
        study = Study(
            study_uid=uid,
            state="done",
            run_no=len(runs),
            first_instance_at=T0,
            last_instance_at=T0,
            updated_at=T0,
            attempts=0,
            patient_id=patient_id,
            accession_number=accession,
            study_date=study_date,
        )
        s.add(study)
        s.flush()
        for run_no, (classified_at, preds) in enumerate(runs, start=1):
            versions = ",".join(sorted({f"{p.model_name}@{p.model_version}" for p in preds}))
            run = Run(
                study_id=study.id, run_no=run_no, started_at=T0, classified_at=classified_at, model_versions=versions
            )
            s.add(run)
            s.flush()
            s.add_all(
                PredictionRow(
                    run_id=run.id,
                    sop_instance_uid=p.sop_instance_uid,
                    model_name=p.model_name,
                    model_version=p.model_version,
                    task=p.task,
                    label=p.label,
                    probability=p.probability,
                    laterality=p.laterality,
                    detail=p.to_dict(),
                )
                for p in preds
            )
    return uid


def bilateral_hip(db: Database, classified_at: datetime = T0) -> str:
    return add_study(
        db,
        [
            (
                classified_at,
                [
                    pred("body_part", "hip_pelvis", 0.97),
                    pred("hip_hardware", "tha", 0.91, "R"),
                    pred("hip_hardware", "none", 0.88, "L"),
                    pred("hip_fracture", "no_fracture", 0.8, "R"),
                    pred("hip_fracture", "fracture", 0.7, "L"),
                ],
            )
        ],
    )


def finding(row: dict[str, Any], column: str) -> tuple[Any, ...]:
    return tuple(row[f"{column}{s}"] for s in ("", "_probability", "_task", "_model", "_side"))


# --- rows --------------------------------------------------------------------------------------------------------


def test_bilateral_hip_study_gives_a_right_and_a_left_row(db: Database) -> None:
    uid = bilateral_hip(db)
    rows = registry_rows(db)
    assert [(r["study_uid"], r["side"]) for r in rows] == [(uid, "R"), (uid, "L")]
    right, left = rows
    assert list(right) == list(COLUMNS)
    assert (right["patient_id"], right["accession_number"], right["study_date"], right["run_no"]) == (
        "P0001",
        "ACC0001",
        date(2024, 5, 1),
        1,
    )
    assert right["classified_at"] == T0
    assert finding(right, "body_part") == finding(left, "body_part") == ("hip_pelvis", 0.97, "body_part", "bp@1.0", "")
    assert finding(right, "hardware_type") == ("tha", 0.91, "hip_hardware", "hiphw@2.1", "R")
    assert finding(left, "hardware_type") == ("none", 0.88, "hip_hardware", "hiphw@2.1", "L")
    assert finding(right, "fracture")[:2] == ("no_fracture", 0.8)
    assert finding(left, "fracture")[:2] == ("fracture", 0.7)
    assert finding(right, "implant_model") == (None,) * 5
    assert right["model_versions"] == "bp@1.0,fx@0.9,hiphw@2.1"


def test_unsided_study_gives_one_row_with_empty_side(db: Database) -> None:
    uid = add_study(
        db,
        [(T0, [pred("body_part", "shoulder", 0.93), pred("implant_presence", "present", 0.85)])],
        patient_id=None,
        accession=None,
        study_date="2024-5-1",  # malformed DA: exported as no date
    )
    (row,) = registry_rows(db)
    assert (row["study_uid"], row["side"], row["patient_id"], row["study_date"]) == (uid, "", None, None)
    assert finding(row, "body_part")[:2] == ("shoulder", 0.93)
    assert finding(row, "implant_presence")[:2] == ("present", 0.85)
    assert row["hardware_type"] is None


def test_indeterminate_and_disagreeing_images(db: Database) -> None:
    add_study(
        db,
        [
            (
                T0,
                [
                    # right: three images disagree; the most probable decided one wins over a likelier indeterminate
                    pred("hip_hardware", "tha", 0.6, "R"),
                    pred("hip_hardware", "dhs", 0.9, "R"),
                    pred("hip_hardware", "indeterminate", 0.95, "R"),
                    # left: nothing decided → indeterminate, at the top probability
                    pred("hip_hardware", "indeterminate", 0.4, "L"),
                    pred("hip_hardware", "indeterminate", 0.45, "L"),
                    # an unsided arthroplasty read counts for both sides, under the same rule
                    pred("hip_arthroplasty", "yes_THA", 0.5),
                    pred("hip_fracture", "indeterminate", 0.3, "R"),
                ],
            )
        ],
    )
    right, left = registry_rows(db)
    assert finding(right, "hardware_type") == ("dhs", 0.9, "hip_hardware", "hiphw@2.1", "R")
    assert finding(left, "hardware_type") == ("yes_THA", 0.5, "hip_arthroplasty", "tha@1.3", "")
    assert finding(right, "fracture") == ("indeterminate", 0.3, "hip_fracture", "fx@0.9", "R")
    assert left["fracture"] is None


def test_all_indeterminate_side_says_indeterminate(db: Database) -> None:
    add_study(
        db, [(T0, [pred("hip_hardware", "indeterminate", 0.4, "L"), pred("hip_hardware", "indeterminate", 0.45, "L")])]
    )
    (left,) = registry_rows(db)
    assert (left["side"], left["hardware_type"], left["hardware_type_probability"]) == ("L", "indeterminate", 0.45)


def test_not_assessed_side_names_no_class_and_no_probability(db: Database) -> None:
    """The domain gate refused every image of the side: the registry says so and keeps no class's probability."""
    refused = [
        pred("hip_hardware", Prediction.NOT_ASSESSED, 0.99, "R"),
        pred("hip_hardware", "indeterminate", 0.4, "L"),
    ]
    add_study(db, [(T0, refused)])
    right, left = registry_rows(db)
    assert finding(right, "hardware_type") == ("not_assessed", None, "hip_hardware", "hiphw@2.1", "R")
    assert left["hardware_type"] == "indeterminate"
    bundle = json.loads(bundle_json([right, left]))
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    refused_obs = next(
        o for o in observations if o.get("bodySite", {}).get("coding", [{}])[0].get("code") == "24028007"
    )
    assert "valueCodeableConcept" not in refused_obs and "component" not in refused_obs
    assert refused_obs["dataAbsentReason"]["coding"][0]["code"] == "not-applicable"
    Bundle.model_validate_json(bundle_json([right, left]))


def test_a_decided_image_wins_over_a_refused_one(db: Database) -> None:
    add_study(
        db, [(T0, [pred("hip_hardware", Prediction.NOT_ASSESSED, 0.99, "R"), pred("hip_hardware", "tha", 0.8, "R")])]
    )
    (right,) = registry_rows(db)
    assert (right["hardware_type"], right["hardware_type_probability"]) == ("tha", 0.8)


def test_latest_classified_run_wins(db: Database) -> None:
    uid = add_study(
        db,
        [
            (T0, [pred("hip_hardware", "tha", 0.9, "R")]),
            (T0 + timedelta(hours=1), [pred("hip_hardware", "dhs", 0.8, "R")]),
            (None, [pred("hip_hardware", "im_nail", 0.99, "R")]),  # run 3 still being classified
        ],
    )
    add_study(db, [(None, [pred("body_part", "knee", 0.9)])])  # never classified: not exported
    add_study(db, [(T0, [])])  # classified, nothing applicable: one empty row
    rows = registry_rows(db)
    assert [(r["run_no"], r["hardware_type"]) for r in rows if r["study_uid"] == uid] == [(2, "dhs")]
    assert len(rows) == 2
    empty = next(r for r in rows if r["study_uid"] != uid)
    assert empty["side"] == "" and all(empty[c] is None for c in REGISTRY_COLUMNS)


def test_since_filters_on_the_classification_time(db: Database) -> None:
    day = datetime(2024, 6, 10, tzinfo=UTC)
    add_study(db, [(day - timedelta(microseconds=1), [pred("body_part", "knee", 0.9)])], study_date="20240701")
    at_midnight = add_study(db, [(day, [pred("body_part", "spine", 0.9)])], study_date="19990101")
    # classified earlier, re-classified after the date: exported, with the new run
    rerun = add_study(
        db,
        [(day - timedelta(days=5), [pred("body_part", "knee", 0.9)]), (day + timedelta(days=1), [])],
    )
    assert [r["study_uid"] for r in registry_rows(db, since=day.date())] == [at_midnight, rerun]
    assert registry_rows(db, since=date(2024, 6, 12)) == []
    assert len(registry_rows(db)) == 3


# --- formats -----------------------------------------------------------------------------------------------------


def test_csv_parses_back(db: Database) -> None:
    uid = bilateral_hip(db)
    out = io.StringIO()
    write_csv(registry_rows(db), out)
    reader = csv.DictReader(io.StringIO(out.getvalue()))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    right, left = list(reader)
    assert (right["study_uid"], right["side"], left["side"]) == (uid, "R", "L")
    assert (right["study_date"], right["classified_at"]) == ("2024-05-01", T0.isoformat())
    assert (right["hardware_type"], float(right["hardware_type_probability"])) == ("tha", 0.91)
    assert (right["implant_model"], right["implant_model_probability"], right["body_part_side"]) == ("", "", "")


def test_parquet_reads_back_with_the_declared_types(db: Database, tmp_path: Path) -> None:
    bilateral_hip(db)
    path = tmp_path / "registry.parquet"
    write_parquet(registry_rows(db), path)
    table = pq.read_table(path)
    assert table.schema.equals(parquet_schema())
    assert table.schema.field("study_date").type == pa.date32()
    assert table.schema.field("classified_at").type == pa.timestamp("us", tz="UTC")
    assert all(table.schema.field(f"{c}_probability").type == pa.float64() for c in REGISTRY_COLUMNS)
    data = table.to_pylist()
    assert [r["side"] for r in data] == ["R", "L"]
    assert (data[0]["study_date"], data[0]["classified_at"], data[0]["hardware_type_probability"]) == (
        date(2024, 5, 1),
        T0,
        0.91,
    )
    assert data[0]["implant_model_probability"] is None

    write_parquet([], tmp_path / "empty.parquet")
    empty = pq.read_table(tmp_path / "empty.parquet")
    assert (empty.num_rows, empty.schema.equals(parquet_schema())) == (0, True)


def test_fhir_bundle_reparses_with_expected_resources(db: Database) -> None:
    hip = bilateral_hip(db)
    add_study(db, [(T0 + timedelta(minutes=1), [pred("body_part", "shoulder", 0.93)])], patient_id="P0002")
    out = io.StringIO()
    write_fhir(registry_rows(db), out)
    bundle = Bundle.model_validate_json(out.getvalue())  # validates every resource again
    assert bundle.type == "collection"
    resources = [e.resource for e in bundle.entry or []]
    # hip: body part once (unsided, shared by both rows), hardware R + L, fracture R + L; shoulder: body part
    assert sum(isinstance(r, DiagnosticReport) for r in resources) == 2
    assert sum(isinstance(r, Observation) for r in resources) == 6

    entries = json.loads(out.getvalue())["entry"]
    report = entries[0]["resource"]
    observations = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Observation"]
    assert report["status"] == "preliminary"
    assert report["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{hip}"}
    assert report["subject"] == {"type": "Patient", "identifier": {"value": "P0001"}}
    urls = {e["fullUrl"] for e in entries}
    assert len(report["result"]) == 5 and all(ref["reference"] in urls for ref in report["result"])
    right_hw = next(
        o
        for o in observations
        if o["code"]["coding"][0]["code"] == "hip_hardware" and o["bodySite"]["coding"][0]["code"] == "24028007"
    )
    assert right_hw["status"] == "preliminary" and right_hw["code"]["coding"][0]["system"] == TASK_SYSTEM
    value = right_hw["valueCodeableConcept"]["coding"][0]
    assert (value["system"], value["code"]) == (label_system("hip_hardware"), "tha")
    assert right_hw["component"][0]["valueQuantity"]["value"] == 0.91
    assert right_hw["device"] == {"display": "hiphw@2.1"}
    sides = {o["bodySite"]["coding"][0]["code"] for o in observations if "bodySite" in o}
    assert sides == {code for code, _ in LATERALITY.values()}
    body_parts = [o for o in observations if o["code"]["coding"][0]["code"] == "body_part"]
    assert len(body_parts) == 2 and all("bodySite" not in o for o in body_parts)
    # deterministic: the same rows give the same bundle
    assert bundle_json(registry_rows(db)) == out.getvalue().rstrip("\n")


# --- the command -------------------------------------------------------------------------------------------------

runner = CliRunner()


def test_registry_export_command(db: Database, tmp_path: Path) -> None:
    config = tmp_path / "predictd.toml"
    config.write_text(f'[database]\nurl = "{db.url}"\n')
    old = add_study(db, [(datetime(2024, 1, 5, tzinfo=UTC), [pred("body_part", "knee", 0.9)])])
    hip = bilateral_hip(db, datetime(2024, 3, 1, 8, tzinfo=UTC))

    def invoke(*args: str) -> Any:
        return runner.invoke(app, ["--config", str(config), "registry", "export", *args])

    result = invoke("--format", "csv")
    assert result.exit_code == 0, result.output
    assert [(r["study_uid"], r["side"]) for r in csv.DictReader(io.StringIO(result.stdout))] == [
        (old, ""),
        (hip, "R"),
        (hip, "L"),
    ]

    result = invoke("--since", "2024-02-01")
    assert result.exit_code == 0
    assert {r["study_uid"] for r in csv.DictReader(io.StringIO(result.stdout))} == {hip}

    path = tmp_path / "out.parquet"
    result = invoke("--format", "parquet", "--output", str(path))
    assert result.exit_code == 0 and "wrote 3 rows" in result.output
    assert pq.read_table(path).schema.equals(parquet_schema())

    result = invoke("--format", "fhir")
    assert result.exit_code == 0
    assert len(Bundle.model_validate_json(result.stdout).entry or []) == 2 + 1 + 5

    path = tmp_path / "out.json"
    result = invoke("--format", "fhir", "--since", "2024-03-02", "--output", str(path))
    assert result.exit_code == 0 and "wrote 0 rows" in result.output
    assert Bundle.model_validate_json(path.read_text()).entry is None

    result = invoke("--format", "parquet")
    assert result.exit_code == 2 and "--output" in result.output
    result = invoke("--since", "March")
    assert result.exit_code == 2
