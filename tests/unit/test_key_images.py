"""Key images: Grad-CAM overlays of real radiographs as Secondary Captures passing dciodvfy, and the SR citing them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from predictd.models.card import Label
from predictd.models.demo import write_model
from predictd.models.explain import overlay_rgb
from predictd.models.explain_engine import explain_prediction
from predictd.models.inference import Engine
from predictd.models.prediction import Prediction
from predictd.models.preprocess import to_gray
from predictd.reporting import codes, uids
from predictd.reporting.key_images import SERIES_DESCRIPTION, build_key_image
from predictd.reporting.sr import build_sr
from predictd.reporting.text import report_text
from tests.support import CR_JLSL, assert_dciodvfy_clean, pydicom_data_file

LABELS = (Label("none", "no hardware"), Label("tha", "total hip arthroplasty"), Label("dhs", "dynamic hip screw"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    models = tmp_path_factory.mktemp("models")
    write_model(models / "tiny_hip", name="tiny_hip", task="hip_hardware", labels=LABELS, bilateral=True)
    return Engine.load(models, device="cpu")


@pytest.fixture(scope="module")
def hip() -> pydicom.Dataset:
    """Real CR hip, portrait: a bilateral model reads it whole (no region, no side)."""
    return pydicom.dcmread(CR_JLSL)


@pytest.fixture(scope="module")
def square() -> pydicom.Dataset:
    """Real CR (WG04 RG3), square with PatientOrientation R\\F: a bilateral model reads its two halves."""
    return pydicom.dcmread(pydicom_data_file("RG3_UNCR.dcm"))


def _sc(engine: Engine, ds: pydicom.Dataset, p: Prediction, sr_uid: str = "2.25.7", **kwargs: object) -> hd.sc.SCImage:
    overlay = explain_prediction(engine, ds, p)
    [card] = [c for c in engine.cards if c.name == p.model_name]
    return build_key_image(ds, p, card, overlay, sr_uid=sr_uid, instance_number=1, **kwargs)  # type: ignore[arg-type]


def test_key_image_of_a_real_radiograph(engine: Engine, hip: pydicom.Dataset, tmp_path: Path) -> None:
    [p] = engine.predict([hip])
    sc = _sc(engine, hip, p, institution_name="Test Hospital")
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)

    back = pydicom.dcmread(path)
    image = hd.imread(path)
    assert image.SOPInstanceUID == sc.SOPInstanceUID
    assert back.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
        assert back.get(keyword) == hip.get(keyword), keyword
    assert back.SeriesInstanceUID == uids.key_image_series_uid(hip.StudyInstanceUID)
    assert back.SeriesInstanceUID not in {hip.SeriesInstanceUID, uids.sr_series_uid(hip.StudyInstanceUID)}
    assert back.SeriesDescription == SERIES_DESCRIPTION
    assert "AI overlay" in back.SeriesDescription and "unverified" in back.SeriesDescription
    assert back.BurnedInAnnotation == "YES"
    assert back.SamplesPerPixel == 3 and back.BitsAllocated == 8
    # JPEG baseline, declared lossy: an overlay shows where the evidence lies, not fine detail
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert back.PhotometricInterpretation == "YBR_FULL_422"
    assert back.LossyImageCompression == "01" and back.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(back.LossyImageCompressionRatio) > 5
    [source] = back.SourceImageSequence
    assert source.ReferencedSOPInstanceUID == hip.SOPInstanceUID
    assert source.PurposeOfReferenceCodeSequence[0].CodeValue == codes.SOURCE_IMAGE_FOR_PROCESSING.value
    # the receiver drops anything whose Contributing Equipment carries our Device UID: it must be here
    ours = [item for item in back.ContributingEquipmentSequence if item.get("DeviceUID") == uids.device_uid()]
    assert len(ours) == 1 and ours[0].Manufacturer == "predictd" and ours[0].InstitutionName == "Test Hospital"
    assert ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_EQUIPMENT.value
    assert "tiny_hip@" in ours[0].SoftwareVersions[1]

    # the pixels are the overlay (to within JPEG's loss), with the legend burned into the top-left corner only
    overlay = explain_prediction(engine, hip, p).astype(np.int16)
    pixels = back.pixel_array.astype(np.int16)  # pydicom returns RGB
    assert pixels.shape == overlay.shape and max(pixels.shape[:2]) == 1024  # the default cap on the long side
    assert np.abs(pixels[:20, :200] - overlay[:20, :200]).mean() > 20
    rows = pixels.shape[0]
    assert np.abs(pixels[rows // 2 :] - overlay[rows // 2 :]).mean() < 3


def test_key_image_uids_are_deterministic(engine: Engine, hip: pydicom.Dataset, square: pydicom.Dataset) -> None:
    [p] = engine.predict([hip])
    first, again = _sc(engine, hip, p), _sc(engine, hip, p)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert _sc(engine, hip, p, sr_uid="2.25.8").SOPInstanceUID != first.SOPInstanceUID  # another run's SR
    other_label = dataclasses.replace(p, label="tha" if p.label != "tha" else "none")
    assert _sc(engine, hip, other_label).SOPInstanceUID == first.SOPInstanceUID  # one finding, one image per run
    left, right = engine.predict([square])
    assert {left.region, right.region} == {"image-left", "image-right"}
    assert _sc(engine, square, left).SOPInstanceUID != _sc(engine, square, right).SOPInstanceUID
    for uid in (first.SOPInstanceUID, first.SeriesInstanceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64


def test_overlay_of_one_half_leaves_the_other_without_heat(engine: Engine, square: pydicom.Dataset) -> None:
    left, right = engine.predict([square])
    [card] = engine.cards
    gray = to_gray(square, card.preprocessing.window)
    shown = np.round(np.clip(gray, 0, 1) * 255).astype(np.float32) / 255  # key images are drawn on an 8-bit image
    no_heat = overlay_rgb(shown, np.zeros_like(gray))
    width = gray.shape[1]
    image_left = explain_prediction(engine, square, left, max_side=None)
    assert image_left.shape == (*gray.shape, 3) and image_left.dtype == np.uint8
    np.testing.assert_array_equal(image_left[:, (width + 1) // 2 :], no_heat[:, (width + 1) // 2 :])
    assert (image_left[:, : width // 2] != no_heat[:, : width // 2]).any()
    image_right = explain_prediction(engine, square, right, max_side=None)
    np.testing.assert_array_equal(image_right[:, : width // 2], no_heat[:, : width // 2])
    # the side the finding is on is in the image's legend text and description, for a viewer without the SR
    sc = _sc(engine, square, left)
    assert {"L": "left", "R": "right"}[str(left.laterality)] in sc.DerivationDescription


def test_explain_prediction_refuses_the_wrong_image_or_model(
    engine: Engine, hip: pydicom.Dataset, square: pydicom.Dataset
) -> None:
    [p] = engine.predict([hip])
    with pytest.raises(ValueError, match="not the image"):
        explain_prediction(engine, square, p)
    with pytest.raises(ValueError, match="another model"):
        explain_prediction(engine, hip, dataclasses.replace(p, model_version="9.9"))
    [card] = engine.cards
    with pytest.raises(ValueError, match="not the image"):
        build_key_image(square, p, card, np.zeros((8, 8, 3), dtype=np.uint8), sr_uid="2.25.7", instance_number=1)
    with pytest.raises(ValueError, match="RGB"):
        build_key_image(hip, p, card, np.zeros((8, 8), dtype=np.uint8), sr_uid="2.25.7", instance_number=1)


def test_sr_with_predecessor_and_key_images_passes_dciodvfy(
    engine: Engine, square: pydicom.Dataset, tmp_path: Path
) -> None:
    preds = engine.predict([square])
    cards = {card.name: card for card in engine.cards}
    study = str(square.StudyInstanceUID)
    sr_uid = uids.sr_instance_uid(study, 2, engine.model_versions)
    key_images = {i: _sc(engine, square, p, sr_uid=sr_uid) for i, p in enumerate(preds)}
    sr = build_sr(
        [square],
        preds,
        cards,
        report_text=report_text(preds, cards),
        sop_instance_uid=sr_uid,
        series_instance_uid=uids.sr_series_uid(study),
        instance_number=2,
        predecessor_sr_uid=uids.sr_instance_uid(study, 1, engine.model_versions),
        key_images=key_images,
    )
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    for i, sc in key_images.items():
        sc_path = tmp_path / f"sc{i}.dcm"
        sc.save_as(sc_path, enforce_file_format=True)
        assert_dciodvfy_clean(sc_path)
    assert_dciodvfy_clean(path)
    back = hd.sr.srread(path)
    referenced = [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in hd.sr.utils.find_content_items(back, name=codes.BEST_ILLUSTRATION, recursive=True)
    ]
    assert referenced == [key_images[0].SOPInstanceUID, key_images[1].SOPInstanceUID]
    assert back.PredecessorDocumentsSequence[0].StudyInstanceUID == study
