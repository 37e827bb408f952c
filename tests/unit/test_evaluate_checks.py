"""models.evaluate's warnings and the out-of-domain measurement of ``predictd evaluate --ood``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from predictd.models import data, probes
from predictd.models.card import ModelCard, Preprocessing
from predictd.models.catalog import catalog
from predictd.models.evaluate import evaluate_ood, report_warnings
from predictd.models.metrics import evaluate
from predictd.models.train import Trainer, TrainOptions
from tests.support import SHARED_DATA

HIP = SHARED_DATA / "hip_tha_radiologyai"


def _report(y: np.ndarray, probs: np.ndarray, before: float, after: float) -> dict:
    report = evaluate(y, probs, ["a", "b", "c"], n_boot=0)
    report["calibration"] = {"ece_before": before, "ece_after": after}
    return report


def test_warnings_name_what_makes_figures_untrustworthy() -> None:
    y = np.array([0] * 8 + [1, 2])
    always_a = np.tile([0.9, 0.05, 0.05], (10, 1))
    warnings = report_warnings(_report(y, always_a, 0.10, 0.20), y, "test")
    assert any("only 10 images" in w for w in warnings)
    assert any("no better than always answering the most frequent class (0.800)" in w for w in warnings)
    assert any("made calibration worse" in w for w in warnings)
    assert any("precision is undefined (n/a): b, c" in w for w in warnings)


def test_no_warnings_for_a_good_model_on_a_large_split() -> None:
    y = np.arange(90) % 3
    right = np.eye(3)[y] * 0.8 + 0.2 / 3
    assert report_warnings(_report(y, right, 0.2, 0.1), y, "test") == []


def test_synthetic_probes_are_seeded_and_cover_each_kind() -> None:
    first, second = probes.synthetic(seed=0), probes.synthetic(seed=0)
    assert {p.category for p in first} == {"blank", "pattern", "noise", "text"}
    assert all(np.array_equal(a.gray, b.gray) for a, b in zip(first, second, strict=True))
    assert all(p.gray.dtype == np.float32 and 0 <= p.gray.min() <= p.gray.max() <= 1 for p in first)


def test_pydicom_data_radiographs_are_probes() -> None:
    found = probes.pydicom_data()
    assert {p.name for p in found} >= {"RG1_UNCR.dcm", "RG3_UNCR.dcm"}
    assert all(p.category == "pydicom-data CR/DX" for p in found)


@pytest.mark.shared_data
def test_ood_report_counts_refusals_per_category(tmp_path: Path) -> None:
    records = data.from_folder_tree(HIP)
    subset = []
    for label in sorted({r.label for r in records}):
        mine = [r for r in records if r.label == label][:5]
        subset += [replace(r, split=s) for r, s in zip(mine, ["train"] * 3 + ["val"] * 2, strict=True)]
    card: ModelCard = replace(catalog()["hip_arthroplasty"], arch="test_efficientnet", version="",
                              preprocessing=Preprocessing(input_size=32, crop_content=True))  # fmt: skip
    options = TrainOptions(epochs=2, batch_size=4, device="cpu")
    result = Trainer(card, subset, tmp_path / "run", options).run()
    found = probes.synthetic(copies=1) + probes.pydicom_data()
    report = evaluate_ood(result.model_dir, found)
    assert report["n"] == len(found) == len(report["cases"])
    assert set(report["by_category"]) == {"blank", "pattern", "noise", "text", "pydicom-data CR/DX"}
    refused = sum(c["refused"] for c in report["cases"])
    assert report["refused"] == pytest.approx(refused / len(found))
    assert sum(c["refused"] for c in report["by_category"].values()) == refused
    assert report["labelled"] <= len(found) - refused
