"""Train → evaluate → export → load → predict on a tiny real subset (hip_tha_radiologyai), in seconds.

A tiny timm network at 32 px cannot learn the task in two epochs; these tests check the toolkit's contracts (resume,
checkpoints, card provenance, sha256, fp16 export, engine loading, report contents), not accuracy.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
import safetensors.torch
import torch

from predictd.models import data
from predictd.models.calibrate import fitted_temperature
from predictd.models.card import ModelCard, Preprocessing, file_sha256
from predictd.models.catalog import catalog
from predictd.models.evaluate import EvaluationError, evaluate_model
from predictd.models.export import export_model
from predictd.models.inference import Engine
from predictd.models.loading import build_model
from predictd.models.report_html import render_html
from predictd.models.train import (
    BEST_WEIGHTS,
    CHECKPOINT,
    LOG_CSV,
    Trainer,
    TrainError,
    TrainOptions,
    labels_for,
)
from tests.support import CR_JLSL, SHARED_DATA

SHARED = SHARED_DATA
HIP = SHARED / "hip_tha_radiologyai"
CR = CR_JLSL
PER_LABEL = 6

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[data.Record], Path]:
    """Six images per label, split 4/1/1 per label (groups are the files: this subset has no near-duplicates)."""
    records = data.from_folder_tree(HIP)
    subset: list[data.Record] = []
    for label in sorted({r.label for r in records}):
        mine = [r for r in records if r.label == label][:PER_LABEL]
        subset += [replace(r, split=s) for r, s in zip(mine, ["train"] * 4 + ["val", "test"], strict=True)]
    path = tmp_path_factory.mktemp("data") / "manifest.csv"
    data.write_manifest(subset, path)
    return data.read_manifest(path), path


def _tiny_card() -> ModelCard:
    template = catalog()["hip_arthroplasty"]
    return replace(
        template,
        arch="test_efficientnet",
        preprocessing=Preprocessing(input_size=32),
        version="",
    )


def _options(**overrides: object) -> TrainOptions:
    return replace(TrainOptions(epochs=3, batch_size=4, patience=10, device="cpu"), **overrides)  # type: ignore[arg-type]


def _collect(into: list[tuple[str, int, int]]) -> Callable[[str, int, int], None]:
    return lambda label, done, total: into.append((label, done, total))


def _log_epochs(run: Path) -> list[int]:
    with (run / LOG_CSV).open() as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def test_train_writes_a_model_the_engine_loads(manifest: tuple[list[data.Record], Path], tmp_path: Path) -> None:
    records, path = manifest
    batches: list[tuple[str, int, int]] = []
    trainer = Trainer(_tiny_card(), records, tmp_path / "run", _options(), path.parent, on_batch=_collect(batches))
    result = trainer.run()

    assert batches[-1] == ("full 3/3", 3, 3)  # 12 train images, batch 4: three steps an epoch, all reported
    assert [b for b in batches if b[0] == "full 1/3"] == [("full 1/3", n, 3) for n in (1, 2, 3)]
    card = ModelCard.load(result.model_dir)
    assert card.sha256 == file_sha256(result.model_dir / card.weights_file)
    assert not card.untrained and card.temperature > 0
    assert set(card.thresholds) == set(card.label_keys) == {"no_THA", "yes_THA", "yes_HRA"}
    assert card.training["seed"] == 0 and len(card.training["data_sha256"]) == 64
    assert card.training["split_counts"]["train"] == {"no_THA": 4, "yes_HRA": 4, "yes_THA": 4}
    assert _log_epochs(tmp_path / "run") == [1, 2, 3]
    assert 1 <= result.best_epoch <= 3

    with Engine.load(result.model_dir.parent, device="cpu") as engine:
        predictions = engine.predict([pydicom.dcmread(CR)])
    assert [p.model_name for p in predictions] == [card.name]
    assert predictions[0].label in (*card.label_keys, "indeterminate", "not_assessed")
    assert card.gated and card.gate["sha256"] == file_sha256(result.model_dir / card.gate["file"])
    assert predictions[0].gate_threshold == 0.0 and predictions[0].gate_score is not None


def test_resume_continues_from_the_saved_epoch(manifest: tuple[list[data.Record], Path], tmp_path: Path) -> None:
    records, path = manifest
    run = tmp_path / "run"
    trainer = Trainer(_tiny_card(), records, run, _options(max_minutes=60.0), path.parent)

    def budget_runs_out_in_epoch_two(label: str, done: int, total: int) -> None:
        if label.startswith("full 2/") and done == 1:
            trainer.deadline = 0.0  # as if the wall clock passed --max-minutes after the first batch of epoch 2

    trainer.on_batch = budget_runs_out_in_epoch_two
    first = trainer.run()
    assert first.epochs_run == 1, "the budget stops inside epoch 2, which is dropped"
    assert (run / CHECKPOINT).is_file() and (run / BEST_WEIGHTS).is_file()
    card = ModelCard.load(first.model_dir)  # the best model so far is installable: the next command works
    assert card.training["complete"] is False and card.training["epochs_run"] == 1

    resumed = Trainer.resume(records, run, path.parent).run()
    assert _log_epochs(run) == [1, 2, 3], "epoch 1 is not trained twice"
    assert resumed.epochs_run == 3
    assert ModelCard.load(resumed.model_dir).training["epochs_run"] == 3


def test_resume_refuses_other_data(manifest: tuple[list[data.Record], Path], tmp_path: Path) -> None:
    records, path = manifest
    run = tmp_path / "run"
    Trainer(_tiny_card(), records, run, _options(epochs=1), path.parent).run()
    moved = [replace(r, split="train") if r.split == "test" else r for r in records]
    with pytest.raises(TrainError, match="differ"):
        Trainer.resume(moved, run, path.parent)


def test_labels_outside_the_card_are_refused(manifest: tuple[list[data.Record], Path]) -> None:
    records, _ = manifest
    with pytest.raises(TrainError, match="not in card"):
        labels_for(_tiny_card(), [*records, replace(records[0], label="hemiarthroplasty")])
    no_labels = replace(_tiny_card(), labels=())
    assert [label.key for label in labels_for(no_labels, records)] == ["no_THA", "yes_HRA", "yes_THA"]


def test_evaluate_reports_what_the_issue_asks(manifest: tuple[list[data.Record], Path], tmp_path: Path) -> None:
    records, path = manifest
    result = Trainer(_tiny_card(), records, tmp_path / "run", _options(epochs=1), path.parent).run()
    report = evaluate_model(result.model_dir, records, "all", data_root=path.parent, n_boot=200)

    assert report["n"] == 3 * PER_LABEL
    for key in ("accuracy", "kappa", "ece", "per_class", "confusion_matrix", "roc", "calibration"):
        assert key in report
    assert set(report["per_class"]) == {"no_THA", "yes_THA", "yes_HRA"}
    for entry in [report["accuracy"], *(m for c in report["per_class"].values() for m in c.values() if m != c)]:
        if isinstance(entry, dict) and entry["value"] is not None and entry["ci"][0] is not None:
            assert entry["ci"][0] - 1e-9 <= entry["value"] <= entry["ci"][1] + 1e-9
    matrix = torch.tensor(report["confusion_matrix"])
    assert int(matrix.sum()) == report["n"]
    accuracy = float(matrix.diag().sum()) / report["n"]
    assert report["accuracy"]["value"] == pytest.approx(accuracy)
    assert len(report["cases"]) == report["n"]
    json.dumps(report)  # JSON-ready
    page = render_html(report)
    assert page.count("<svg") == 3 and report["model"]["name"] in page

    with pytest.raises(EvaluationError, match="no images"):
        evaluate_model(result.model_dir, records, "holdout")


def test_export_halves_the_weights_and_still_loads(manifest: tuple[list[data.Record], Path], tmp_path: Path) -> None:
    records, path = manifest
    result = Trainer(_tiny_card(), records, tmp_path / "run", _options(epochs=1), path.parent).run()
    shipped = tmp_path / "models" / "hip_arthroplasty"
    exported = export_model(result.model_dir, shipped, check_records=[r for r in records if r.split == "val"])

    assert exported.half and exported.card.training["export"]["dtype"] == "float16"
    assert exported.card.training["data_sha256"] == result.card.training["data_sha256"]
    full = (result.model_dir / "weights.safetensors").stat().st_size
    assert (shipped / "weights.safetensors").stat().st_size < 0.6 * full
    dtypes = {t.dtype for t in safetensors.torch.load_file(str(shipped / "weights.safetensors")).values()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes

    with Engine.load(shipped.parent, device="cpu") as engine:
        engine_probability = engine.predict([pydicom.dcmread(CR)])[0].probability
    with Engine.load(result.model_dir.parent, device="cpu") as engine:
        original = engine.predict([pydicom.dcmread(CR)])[0].probability
    assert engine_probability == pytest.approx(original, abs=0.01)


def test_temperature_is_not_fitted_on_a_perfect_validation_split() -> None:
    y = torch.tensor([0, 1, 2, 1])
    perfect = torch.nn.functional.one_hot(y, 3).float() * 4.0
    assert fitted_temperature(perfect.numpy(), y.numpy()) == 1.0
    wrong = perfect.clone()
    wrong[0] = torch.tensor([0.0, 4.0, 0.0])  # one confident mistake: soften
    assert fitted_temperature(wrong.numpy(), y.numpy()) > 1.0


def test_onnx_export_gives_the_same_logits_as_torch(manifest: tuple[list[data.Record], Path], tmp_path: Path) -> None:
    """The ONNX file is for sites that serve with another runtime: it must compute what the card's model computes."""
    ort = pytest.importorskip("onnxruntime")
    records, path = manifest
    result = Trainer(_tiny_card(), records, tmp_path / "run", _options(epochs=1), path.parent).run()
    exported = export_model(result.model_dir, tmp_path / "out", half=False, onnx=True)
    assert exported.onnx is not None and exported.onnx.is_file()

    model = build_model(exported.card)
    model.load_state_dict(safetensors.torch.load_file(str(tmp_path / "out" / "weights.safetensors")))
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": x.numpy()})
    assert got.shape == (3, 3)  # a batch of three through the dynamic batch axis
    assert abs(got - expected).max() < 1e-4


def test_outlier_exposure_trains_on_another_set_and_records_it(
    manifest: tuple[list[data.Record], Path], tmp_path: Path
) -> None:
    """Shoulder images as outliers of a hip model: only their train/val images are used, and the card says so."""
    records, path = manifest
    shoulder = SHARED / "shoulder_implant_uci"
    others = [
        replace(r, split=s)
        for r, s in zip(data.from_folder_tree(shoulder)[:6], ["train"] * 4 + ["val", "test"], strict=True)
    ]
    outliers = tmp_path / "shoulder.csv"
    data.write_manifest(others, outliers)
    said: list[str] = []
    trainer = Trainer(
        _tiny_card(), records, tmp_path / "run", _options(outliers=(str(outliers),)), path.parent, said.append
    )
    result = trainer.run()
    assert trainer.outliers is not None and len(trainer.outliers) == 5  # the test image stays unseen
    assert any("5 outlier images" in line for line in said)
    assert ModelCard.load(result.model_dir).training["options"]["outliers"] == [str(outliers)]
