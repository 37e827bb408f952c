"""The models predictd ships: complete, verified, within size, evaluated, enabled by `make serve`, and read at inference
exactly as they were evaluated."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from predictd.models import data
from predictd.models.card import ModelCard, file_sha256
from predictd.models.evaluate import evaluate_model
from predictd.models.inference import Engine
from predictd.models.install import install_shipped, shipped
from predictd.models.loading import load_verified
from tests.support import REPO, RG2_HIP_JLSL, SHARED_DATA

MAX_WEIGHTS_BYTES = 10_000_000
SERVE_CONFIG = REPO / "deploy" / "predictd.serve.toml"
SHOULDER = SHARED_DATA / "shoulder_implant_uci"


def _enabled() -> list[str]:
    return list(tomllib.loads(SERVE_CONFIG.read_text())["models"]["enabled"])


def test_serve_enables_the_shipped_models() -> None:
    assert set(_enabled()) == {"hip_arthroplasty", "shoulder_implant_manufacturer"}
    assert set(_enabled()) <= set(shipped())


@pytest.mark.parametrize("name", ["hip_arthroplasty", "shoulder_implant_manufacturer"])
def test_shipped_model_is_complete(name: str) -> None:
    folder = shipped()[name]
    card = ModelCard.load(folder)
    weights = folder / card.weights_file
    assert card.sha256 == file_sha256(weights)
    assert weights.stat().st_size <= MAX_WEIGHTS_BYTES
    assert not card.untrained and card.temperature > 0 and set(card.thresholds) == set(card.label_keys)
    for key in ("data_sha256", "split_counts", "seed", "options", "metrics"):
        assert key in card.training, key
    report = json.loads((folder / "evaluation.json").read_text())
    test = card.training["metrics"]["test"]
    assert report["n"] == test["n"] == sum(card.training["split_counts"]["test"].values())
    assert report["accuracy"] == test["accuracy"] and report["model"]["sha256"] == card.sha256
    assert (folder / "evaluation.html").read_text().startswith("<!DOCTYPE html>")


def _as_dicom(jpeg: Path, body_part: str) -> pydicom.Dataset:
    """A JPEG as an 8-bit Secondary Capture whose window maps stored values to value/255, as training read it."""
    pixels = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint8)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined = "OT", body_part
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.PixelData = pixels.tobytes()
    return ds


@pytest.mark.shared_data
def test_the_daemon_reads_images_as_they_were_evaluated(tmp_path: Path) -> None:
    """Install as `make serve` does; the cascade sends a hip to the hip model and a shoulder to the shoulder model,
    and the engine's probability for a test image equals the one in the shipped evaluation."""
    install_shipped(tmp_path, _enabled())
    shoulder_card = ModelCard.load(shipped()["shoulder_implant_manufacturer"])
    report = json.loads((shipped()["shoulder_implant_manufacturer"] / "evaluation.json").read_text())
    case = report["cases"][0]
    (jpeg,) = SHOULDER.glob(f"*/{case['image']}")
    with Engine.load(tmp_path, _enabled(), device="cpu") as engine:
        hip = engine.predict([pydicom.dcmread(RG2_HIP_JLSL)])
        shoulder = engine.predict([_as_dicom(jpeg, "SHOULDER")])
    assert [p.model_name for p in hip] == ["hip_arthroplasty"]
    assert [p.model_name for p in shoulder] == ["shoulder_implant_manufacturer"]
    assert shoulder[0].probability == pytest.approx(case["probability"], abs=2e-3)
    predicted = shoulder[0].label if shoulder[0].label in shoulder_card.label_keys else case["predicted"]
    assert predicted == case["predicted"]


@pytest.mark.shared_data
def test_evaluate_reproduces_the_shipped_hip_figures(tmp_path: Path) -> None:
    """The shipped evaluation is what `predictd evaluate` measures today (same images, same weights)."""
    folder = shipped()["hip_arthroplasty"]
    report = json.loads((folder / "evaluation.json").read_text())
    manifest = data.read_manifest(folder / "manifest.csv")
    again = evaluate_model(folder, manifest, "test", n_boot=0)
    assert again["n"] == report["n"]
    assert again["accuracy"]["value"] == pytest.approx(report["accuracy"]["value"])
    assert again["confusion_matrix"] == report["confusion_matrix"]


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["hip_arthroplasty", "shoulder_implant_manufacturer"])
def test_framing_does_not_change_the_answer(name: str) -> None:
    """The same radiograph padded, letterboxed and cropped five ways: the same label, probabilities within 0.1."""
    from predictd.models.probes import framing_changes

    folder = shipped()[name]
    card, model = load_verified(folder)
    assert card.preprocessing.crop_content, "a shipped model must read the content, not the frame"
    tests = [r for r in data.read_manifest(folder / "manifest.csv") if r.split == "test"][:6]
    changes = framing_changes(model, card, [data.load_gray(r.path) for r in tests])
    assert all(c["same_label"] for c in changes), changes
    assert max(c["max_change"] for c in changes) <= 0.1, changes


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "other"), [("hip_arthroplasty", "shoulder_implant_manufacturer"),
                                             ("shoulder_implant_manufacturer", "hip_arthroplasty")])  # fmt: skip
def test_shipped_gate_figures_are_what_evaluate_measures(name: str, other: str) -> None:
    """The refusals recorded in the card (and printed by `predictd models shipped`) are what `predictd evaluate --ood`
    measures on the same probes today."""
    from predictd.models import probes
    from predictd.models.evaluate import evaluate_ood

    folder = shipped()[name]
    card = ModelCard.load(folder)
    recorded = card.gate["evaluation"]["ood"]
    found = probes.default_probes()
    others = [r for r in data.read_manifest(shipped()[other] / "manifest.csv") if r.split == "test"]
    found += probes.manifest_images(others, f"other manifest {other} (test)")
    found += probes.dicom_folder(RG2_HIP_JLSL.parent)
    report = evaluate_ood(folder, found)
    assert report["n"] == recorded["n"]
    assert report["refused"] == pytest.approx(recorded["refused"])
    assert report["refused_pixels"] == pytest.approx(recorded["refused_pixels"])
    assert report["refused_by"] == recorded["refused_by"]
    assert report["labelled_confident"] == recorded["labelled_confident"]
    assert report["by_category"] == recorded["by_category"]
