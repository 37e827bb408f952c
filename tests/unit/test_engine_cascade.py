"""The cascade inside the engine: which cards run on which image is the cards' data; bilateral cards read each hip."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from predictd.models.body_part import BODY_PARTS
from predictd.models.card import Applicability, Label
from predictd.models.demo import write_model
from predictd.models.inference import Engine
from tests.support import CR_JLSL, pydicom_data_file

LABELS = (Label("a", "A"), Label("b", "B"))


@pytest.fixture(scope="module")
def hip() -> pydicom.Dataset:
    return pydicom.dcmread(CR_JLSL)


@pytest.fixture(scope="module")
def pelvis(hip: pydicom.Dataset) -> pydicom.Dataset:
    """A landscape "both hips" image made from the real hip radiograph (two copies side by side)."""
    ds = copy.deepcopy(hip)  # a shallow copy would share (and decompress) the hip's own elements
    ds.decompress()
    both = np.hstack([ds.pixel_array, ds.pixel_array[:, ::-1]])
    ds.PixelData = both.tobytes()
    ds.Columns = both.shape[1]
    ds.SOPInstanceUID = generate_uid()
    return ds


@pytest.fixture(scope="module")
def chest() -> pydicom.Dataset:
    return pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm"))


def install(root: Path, name: str, **kwargs: object) -> None:
    write_model(root / name, name=name, task=f"{name}_task", labels=kwargs.pop("labels", LABELS), **kwargs)  # type: ignore[arg-type]


def test_cards_run_only_where_they_apply(tmp_path: Path, pelvis: pydicom.Dataset, chest: pydicom.Dataset) -> None:
    install(tmp_path, "hipcard", applies_to=Applicability(body_parts=("hip_pelvis",)), bilateral=True)
    install(tmp_path, "chestcard", applies_to=Applicability(body_parts=("chest",)))
    install(tmp_path, "anycard")
    result = Engine.load(tmp_path, device="cpu").classify([pelvis, chest])
    hip_preds = [(p.model_name, p.region) for p in result.predictions if p.sop_instance_uid == pelvis.SOPInstanceUID]
    chest_preds = [p.model_name for p in result.predictions if p.sop_instance_uid == chest.SOPInstanceUID]
    assert [name for name, _ in hip_preds] == ["anycard", "hipcard", "hipcard"]  # two halves of the pelvis
    assert chest_preds == ["anycard", "chestcard"]
    assert result.selections[pelvis.SOPInstanceUID].body_part == "hip_pelvis"
    assert result.selections[chest.SOPInstanceUID].source == "tags"


def test_bilateral_halves_carry_the_patient_side(tmp_path: Path, pelvis: pydicom.Dataset) -> None:
    install(tmp_path, "hipcard", applies_to=Applicability(body_parts=("hip_pelvis",)), bilateral=True)
    ds = copy.deepcopy(pelvis)
    ds.PatientOrientation = ["L", "F"]  # rows run toward patient left: the image's left half is the right hip
    preds = Engine.load(tmp_path, device="cpu").predict([ds])
    assert [(p.laterality, p.region) for p in preds] == [("R", "image-left"), ("L", "image-right")]
    ds.PatientOrientation = ["R", "F"]
    assert [p.laterality for p in Engine.load(tmp_path, device="cpu").predict([ds])] == ["L", "R"]
    del ds.PatientOrientation  # and no ViewPosition: the side is unknown, the halves are still told apart
    ds.ViewPosition = ""
    preds = Engine.load(tmp_path, device="cpu").predict([ds])
    assert [(p.laterality, p.region) for p in preds] == [(None, "image-left"), (None, "image-right")]


def test_a_single_hip_view_is_not_cut_in_two(tmp_path: Path, hip: pydicom.Dataset) -> None:
    install(tmp_path, "hipcard", applies_to=Applicability(body_parts=("hip_pelvis",)), bilateral=True)
    (prediction,) = Engine.load(tmp_path, device="cpu").predict([hip])  # portrait: one hip
    assert prediction.region is None


def test_nothing_applies_gives_no_prediction_and_a_reason(tmp_path: Path, chest: pydicom.Dataset) -> None:
    install(tmp_path, "hipcard", applies_to=Applicability(body_parts=("hip_pelvis",)), bilateral=True)
    result = Engine.load(tmp_path, device="cpu").classify([chest])
    assert result.predictions == []
    assert "chest" in result.skip_reason


def test_a_blank_image_is_not_assessed_by_every_model_and_says_why(tmp_path: Path, pelvis: pydicom.Dataset) -> None:
    install(tmp_path, "hipcard", applies_to=Applicability(body_parts=("hip_pelvis",)), bilateral=True)
    install(tmp_path, "anycard")
    blank = copy.deepcopy(pelvis)
    blank.PixelData = np.full((blank.Rows, blank.Columns), 700, np.uint16).tobytes()
    blank.SOPInstanceUID = generate_uid()
    result = Engine.load(tmp_path, device="cpu").classify([blank, pelvis])
    refused = [p for p in result.predictions if p.sop_instance_uid == blank.SOPInstanceUID]
    assert [p.model_name for p in refused] == ["anycard", "hipcard", "hipcard"]
    assert all(p.is_not_assessed and "blank" in p.not_assessed_reason for p in refused), refused
    read = [p for p in result.predictions if p.sop_instance_uid == pelvis.SOPInstanceUID]
    assert read and not any(p.is_not_assessed for p in read)


def test_router_answer_overrides_the_tags(tmp_path: Path, hip: pydicom.Dataset) -> None:
    # A router with a single class always answers "chest", whatever the hip file's tags say.
    install(tmp_path, "router", labels=(Label("chest", "chest"),), role="router")
    install(tmp_path, "hipcard", applies_to=Applicability(body_parts=("hip_pelvis",)))
    install(tmp_path, "chestcard", applies_to=Applicability(body_parts=("chest",)))
    result = Engine.load(tmp_path, device="cpu").classify([hip])
    assert [p.model_name for p in result.predictions] == ["chestcard", "router"]
    selection = result.selections[hip.SOPInstanceUID]
    assert (selection.body_part, selection.source) == ("chest", "model")


def test_indeterminate_router_falls_back_to_tags(tmp_path: Path, hip: pydicom.Dataset) -> None:
    labels = tuple(Label(key, key) for key in BODY_PARTS)
    install(tmp_path, "router", labels=labels, role="router", thresholds={k: 1.01 for k in BODY_PARTS})
    install(tmp_path, "hipcard", applies_to=Applicability(body_parts=("hip_pelvis",)))
    result = Engine.load(tmp_path, device="cpu").classify([hip])
    router, finding = sorted(result.predictions, key=lambda p: p.model_name != "router")
    assert router.is_indeterminate and finding.model_name == "hipcard"
    assert result.selections[hip.SOPInstanceUID].source == "tags"
