"""`predictd dataset → train → evaluate → export` as an ML engineer types them, on the real hip set, in seconds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from predictd.daemon.cli import app
from predictd.models.card import ModelCard
from predictd.models.loading import load_verified
from tests.support import REPO, SHARED_DATA

HIP = SHARED_DATA / "hip_tha_radiologyai"

pytestmark = pytest.mark.shared_data


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
    assert card.arch == "test_efficientnet" and card.preprocessing.input_size == 32
    assert card.name == "hip_arthroplasty_site", "a site's model must not collide with the shipped one of its task"
    assert card.preprocessing.crop_content and card.gated
    assert not card.description.startswith("Card template") and "hip_tha_radiologyai" in card.description

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


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "hip.csv"
    _ok(CliRunner(), "dataset", str(HIP), "--out", str(path))
    return path


def test_cross_validated_ensemble_is_calibrated_out_of_fold(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "cv"
    tiny = ("--arch", "test_efficientnet", "--input-size", "32", "--batch-size", "16", "--device", "cpu")
    args = ("train", "--data", str(manifest), "--task", "hip_arthroplasty", "--out", str(run), "--epochs=1")
    output = _ok(CliRunner(), *args, "--folds", "3", *tiny)
    card = ModelCard.load(run / "model")
    assert card.members == 3 and card.gated and "out-of-fold accuracy" in output
    with manifest.open() as fh:
        train_val = sum(1 for row in csv.DictReader(fh) if row["split"] in ("train", "val"))
    calibration = card.training["calibration"]
    assert calibration["n"] == train_val == card.gate["n_reference"]
    assert calibration["fitted_on"].startswith("out-of-fold") and 0.9 <= calibration["gate_passed"] <= 1.0
    assert [(run / f"fold{k}" / "model" / "card.json").is_file() for k in (1, 2, 3)] == [True] * 3

    again = _ok(CliRunner(), *args, "--folds", "3", *tiny)  # finished members are not trained again
    assert "member" not in again and ModelCard.load(run / "model").members == 3

    # Re-assembled with zoom test-time augmentation: the card says so and the loaded ensemble reads the zooms.
    _ok(CliRunner(), *args, "--folds", "3", "--tta-zoom", "1.0", "--tta-zoom", "0.9", *tiny)
    zoomed = ModelCard.load(run / "model")
    assert zoomed.tta_zooms == (1.0, 0.9) and zoomed.training["options"]["tta_zooms"] == [1.0, 0.9]
    assert load_verified(run / "model")[1].zooms == (1.0, 0.9)
    single = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one"), "--tta-zoom", "0.9", *tiny])
    assert single.exit_code == 2 and "cross-validated ensemble" in single.output


def test_calibrate_adds_a_gate_to_a_model_trained_elsewhere(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    tiny = ("--arch", "test_efficientnet", "--input-size", "32", "--device", "cpu", "--epochs=1", "--coverage", "0")
    _ok(CliRunner(), "train", "--data", str(manifest), "--task", "hip_arthroplasty", "--out", str(run), *tiny)
    before = ModelCard.load(run / "model")
    assert not before.gated
    output = _ok(CliRunner(), "calibrate", str(run / "model"), "--data", str(manifest), "--coverage", "0.9")
    after = ModelCard.load(run / "model")
    assert after.gated and after.gate["coverage"] == 0.9 and after.sha256 == before.sha256
    assert "gate (mahalanobis-stages)" in output and after.gate["odds_threshold"] is None
    shoulder = REPO / "models" / "shipped" / "shoulder_implant_manufacturer" / "manifest.csv"
    output = _ok(CliRunner(), "calibrate", str(run / "model"), "--data", str(manifest), "--outliers", str(shoulder))
    classified = ModelCard.load(run / "model")
    assert classified.gate["method"] == "mahalanobis-stages + outlier-classifier"
    assert classified.gate["odds_threshold"] is not None and classified.sha256 == before.sha256


def test_cpu_preset_sets_the_small_network_and_options_still_win(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "preset"
    args = ("train", "--data", str(manifest), "--task", "hip_arthroplasty", "--out", str(run), "--preset", "cpu")
    _ok(CliRunner(), *args, "--epochs=1", "--input-size", "32", "--device", "cpu")
    card = ModelCard.load(run / "model")
    assert card.arch == "resnet10t" and card.arch_kwargs == {"channels": [24, 48, 96, 192]}
    assert card.preprocessing.input_size == 32 and card.training["options"]["epochs"] == 1
    assert card.training["options"]["batch_size"] == 8
    unknown = CliRunner().invoke(app, [*args[:-1], "gpu-huge"])
    assert unknown.exit_code == 2 and "unknown preset" in unknown.output
