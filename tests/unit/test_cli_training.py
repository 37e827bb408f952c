"""`predictd dataset → train → evaluate → export` as an ML engineer types them, on the real hip set, in seconds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import app
from models.card import ModelCard

HIP = Path(__file__).resolve().parents[3] / "shared" / "data" / "hip_tha_radiologyai"

pytestmark = pytest.mark.skipif(not HIP.is_dir(), reason=f"{HIP} is not here")


def _ok(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_dataset_train_evaluate_export(tmp_path: Path) -> None:
    runner = CliRunner()
    manifest = tmp_path / "hip.csv"
    _ok(runner, "dataset", str(HIP), "--out", str(manifest))
    with manifest.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(1 for p in HIP.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    splits_of_group: dict[str, set[str]] = {}
    for row in rows:
        splits_of_group.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of_group.values()), "a group straddles two splits"
    assert {row["split"] for row in rows} == {"train", "val", "test"}

    run = tmp_path / "run"
    tiny = ("--arch", "test_efficientnet", "--input-size", "32", "--batch-size", "16", "--device", "cpu")
    _ok(runner, "train", "--data", str(manifest), "--task", "hip_arthroplasty", "--out", str(run), "--epochs=1", *tiny)
    card = ModelCard.load(run / "model")
    assert card.name == "hip_arthroplasty" and card.arch == "test_efficientnet" and card.preprocessing.input_size == 32

    report_json, report_html = tmp_path / "eval.json", tmp_path / "eval.html"
    output = _ok(
        runner, "evaluate", str(run / "model"), "--data", str(manifest), "--json", str(report_json),
        "--html", str(report_html), "--n-boot", "100",
    )  # fmt: skip
    report = json.loads(report_json.read_text())
    assert report["n"] == sum(1 for row in rows if row["split"] == "test")
    assert {"accuracy", "kappa", "per_class", "ece", "n"} <= set(report)
    assert "accuracy" in output and report_html.read_text().startswith("<!DOCTYPE html>")

    shipped = tmp_path / "models" / "hip_arthroplasty"
    _ok(runner, "export", str(run / "model"), str(shipped), "--data", str(manifest), "--version", "1.0.0")
    exported = ModelCard.load(shipped)
    assert exported.version == "1.0.0" and exported.training["export"]["dtype"] in ("float16", "float32")

    missing = runner.invoke(app, ["train", "--data", str(manifest), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--task or --card" in missing.output
