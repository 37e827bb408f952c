"""Key images: a finding's Grad-CAM overlay as a DICOM Secondary Capture in its own series of the study.

The overlay itself (RGB, in the image's geometry) comes from ``models.explain_engine.explain_prediction``; this
module only wraps it for the PACS:

- same patient and study as the radiograph, a new series (:func:`reporting.uids.key_image_series_uid`) whose
  description says it is an unverified AI overlay, and a SOP Instance UID derived from the SR's UID and the
  finding (:func:`reporting.uids.key_image_uid`), so a retried run rebuilds the very same objects;
- Burned In Annotation YES: a short legend (what the colours are, the model's answer, "not for diagnosis") is
  drawn into the pixels, because a key image travels alone into viewers that show no SR next to it;
- the Source Image Sequence names the radiograph (and the side, through Derivation Description);
- a Contributing Equipment item with predictd's Device UID (reporting.sr.predictd_equipment), by which the receiver
  ignores our own output when a PACS forwards it back. It must be in every key image;
- JPEG baseline (YBR_FULL_422, Pillow through highdicom) and declared lossy (Lossy Image Compression 01, method and
  ratio): an overlay shows where the evidence lies, not fine detail, and 2.6 MB of raw RGB per key image costs
  every PACS and viewer on the way (bench/key_images.py: about 0.1 MB).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont

from predictd.models.card import ModelCard
from predictd.models.prediction import Prediction
from predictd.reporting import codes, uids
from predictd.reporting.sr import DEVICE_NAME, SOFTWARE_VERSION, predictd_equipment

KEY_IMAGE_SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "predictd AI overlay Grad-CAM (unverified)"
_SIDE_WORDS = {"R": "right", "L": "left"}
_ORIENTATION_LETTERS = frozenset("LRAPHF")


def build_key_image(
    source: pydicom.Dataset,
    prediction: Prediction,
    card: ModelCard,
    overlay: np.ndarray,
    *,
    sr_uid: str,
    instance_number: int,
    series_number: int = KEY_IMAGE_SERIES_NUMBER,
    manufacturer: str = "predictd",
    institution_name: str | None = None,
    series_description: str = SERIES_DESCRIPTION,
    software_version: str = SOFTWARE_VERSION,
    legend: bool = True,
) -> hd.sc.SCImage:
    """One Secondary Capture (RGB) of ``overlay``: the Grad-CAM of ``prediction`` on ``source``, its radiograph.

    ``sr_uid`` is the SOP Instance UID of the SR that will reference this image; with the finding it fixes this
    image's UID. ``overlay`` is uint8 (rows, cols, 3), as ``models.explain_engine.explain_prediction`` returns it
    (possibly downscaled from the radiograph; the geometry is otherwise the radiograph's, so its Patient Orientation
    holds).
    """
    if str(source.SOPInstanceUID) != prediction.sop_instance_uid:
        raise ValueError("the source is not the image the prediction was made from")
    if card.name != prediction.model_name:
        raise ValueError(f"card {card.name!r} is not the prediction's model {prediction.model_name!r}")
    if overlay.ndim != 3 or overlay.shape[2] != 3 or overlay.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (rows, cols, 3) RGB overlay, got {overlay.dtype} {overlay.shape}")
    side = prediction.laterality.upper() if prediction.laterality else None
    model = f"{prediction.model_name}@{prediction.model_version}"
    key = uids.finding_key(model, prediction.sop_instance_uid, side, prediction.region)
    finding = _finding_text(prediction, card, side)
    pixels = _with_legend(overlay, finding, prediction) if legend else overlay
    orientation, placeholder = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=_header(source),
        pixel_array=np.ascontiguousarray(pixels),
        photometric_interpretation=hd.PhotometricInterpretationValues.YBR_FULL_422,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.key_image_series_uid(str(source.StudyInstanceUID)),
        series_number=series_number,
        sop_instance_uid=uids.key_image_uid(sr_uid, key),
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_orientation=orientation,
        transfer_syntax_uid=pydicom.uid.JPEGBaseline8Bit,
        contributing_equipment=[
            predictd_equipment(
                manufacturer,
                software_version,
                [model],
                institution_name=institution_name,
            )
        ],
        series_description=series_description,
        manufacturer_model_name=DEVICE_NAME,
        software_versions=software_version,
        institution_name=institution_name,
    )
    if placeholder:
        # highdicom requires an orientation for the PATIENT coordinate system; Patient Orientation is Type 2C, so
        # an unknown (or not single-letter) one is sent as the source has it, or empty, rather than invented.
        sc.PatientOrientation = _values(source.get("PatientOrientation"))
    # Series-level Laterality (Type 2C, needed for paired body parts) stays empty: the series holds the overlays of
    # every image and side of the study; each image's side is in its legend, Derivation Description and the SR.
    sc.Laterality = ""
    sc.BurnedInAnnotation = "YES" if legend else "NO"
    sc.RecognizableVisualFeatures = "NO"
    sc.DerivationDescription = _truncate(f"Grad-CAM heat map over the source radiograph: {finding}", 1024)
    sc.ImageComments = _truncate(f"AI overlay, not verified by a radiologist. {finding}", 10240)
    sc.SourceImageSequence = [_source_reference(source)]
    sc.LossyImageCompression = "01"
    sc.LossyImageCompressionMethod = "ISO_10918_1"
    sc.LossyImageCompressionRatio = f"{pixels.size / len(sc.PixelData):.2f}"[:16]
    return sc


def _finding_text(prediction: Prediction, card: ModelCard, side: str | None) -> str:
    """E.g. "hip_hardware: total hip arthroplasty (p=0.93), right" (no patient data: it is burned into pixels)."""
    answer = card.label(prediction.label).display if prediction.is_decided else prediction.label.replace("_", " ")
    where = _SIDE_WORDS.get(side or "") or (prediction.region or "")
    text = f"{prediction.task}: {answer} (p={prediction.probability:.2f})"
    return f"{text}, {where}" if where else text


def _with_legend(overlay: np.ndarray, finding: str, prediction: Prediction) -> np.ndarray:
    """The overlay with a dark band at the top holding three short lines of white text."""
    rows, cols = overlay.shape[:2]
    size = max(10, min(rows, cols) // 40)
    font = ImageFont.load_default(size=size)
    lines = [
        "AI OVERLAY (Grad-CAM) - UNVERIFIED - NOT FOR DIAGNOSIS",
        finding,
        f"red = strongest evidence, blue = weak | {prediction.model_name} {prediction.model_version}",
    ]
    image = Image.fromarray(overlay, mode="RGB")
    draw = ImageDraw.Draw(image)
    pad = max(2, size // 3)
    height = pad + len(lines) * (size + pad)
    width = min(cols, pad * 2 + max(int(draw.textlength(line, font=font)) for line in lines))
    draw.rectangle((0, 0, width, min(rows, height)), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * (size + pad)), line, fill=(255, 255, 255), font=font)
    return np.asarray(image, dtype=np.uint8)


def _orientation(source: pydicom.Dataset) -> tuple[tuple[str, str], bool]:
    """The source's Patient Orientation when highdicom accepts it (one letter per axis), else a placeholder."""
    letters = [v.strip().upper() for v in _values(source.get("PatientOrientation"))]
    if len(letters) == 2 and all(v in _ORIENTATION_LETTERS and len(v) == 1 for v in letters):
        return (letters[0], letters[1]), False
    return ("L", "F"), True


def _values(value: object) -> list[str]:
    """A DICOM value that may be absent, one string or several, as a list of strings."""
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [str(value)]


def _source_reference(source: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [codes.SOURCE_IMAGE_FOR_PROCESSING]
    return item


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _header(source: pydicom.Dataset) -> pydicom.Dataset:
    """The source without pixel data: highdicom reads patient, study and acquisition equipment from it."""
    header = pydicom.Dataset()
    for element in source:
        if element.tag.group < 0x7FE0:
            header.add(element)
    return header
