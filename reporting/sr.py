"""The DICOM Comprehensive SR that carries predictd's results back to the PACS.

Built only from highdicom template classes, so the structure is TID 1500 "Measurement Report" as highdicom (and
every TID 1500 reader) understands it:

- observation context: predictd as the device observer (TID 1004), with a fixed device UID;
- procedure reported: (43468-8, LN, "XR unspecified body region");
- one TID 1501 measurement group per prediction, i.e. per (model, image, laterality), holding the algorithm
  (TID 4019 name and version), the source image reference, a qualitative evaluation task concept → label concept,
  laterality as SNOMED CT Right/Left when known, and the probability as (122157, DCM, "Probability") in UCUM "1";
- the prepopulated report text as a TEXT item in TID 1500's document-level "Qualitative Evaluations" container.
  highdicom's MeasurementReport constructor has no argument for that row, so the container is appended to the
  template's root after construction, built from highdicom content items.

The document is marked UNVERIFIED, PARTIAL and PRELIMINARY: nobody accountable has read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes as dcm_codes

from models.card import ModelCard
from models.prediction import Prediction
from reporting import codes, uids

DEVICE_NAME = "predictd"

_TYPE2_HEADER = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
"""Type 2 attributes highdicom reads from the first source without a default; absent ones are sent empty."""


def build_sr(
    sources: Sequence[pydicom.Dataset],
    predictions: Sequence[Prediction],
    cards: Mapping[str, ModelCard],
    *,
    report_text: str,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int = 9901,
    instance_number: int = 1,
    manufacturer: str = "predictd",
    institution_name: str | None = None,
    series_description: str = "predictd AI result (unverified)",
    software_version: str = "0.1.0",
) -> pydicom.Dataset:
    """One Comprehensive SR for one study's predictions.

    ``sources`` are the study's images (read with or without pixels); each prediction must refer to one of them by
    SOP Instance UID and its model must be in ``cards``. Patient and study attributes are copied from the first
    source. Raises ValueError on an empty or inconsistent input rather than sending a misleading document.
    """
    by_uid = _check_inputs(sources, predictions, cards)
    groups = [
        _measurement_group(p, by_uid[p.sop_instance_uid], cards[p.model_name], sop_instance_uid, index)
        for index, p in enumerate(predictions, start=1)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(manufacturer),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_text_container(report_text))
    return hd.sr.ComprehensiveSR(
        evidence=[_evidence(src) for src in sources],
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        institution_name=institution_name,
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=series_description,
        software_versions=software_version,
        manufacturer_model_name=DEVICE_NAME,
        coding_schemes=[codes.coding_scheme_item()],
    )


def _check_inputs(
    sources: Sequence[pydicom.Dataset], predictions: Sequence[Prediction], cards: Mapping[str, ModelCard]
) -> dict[str, pydicom.Dataset]:
    if not sources:
        raise ValueError("an SR needs at least one source image")
    if not predictions:
        raise ValueError("an SR needs at least one prediction (TID 1500 needs a measurement group)")
    studies = {str(src.StudyInstanceUID) for src in sources}
    if len(studies) != 1:
        raise ValueError(f"sources come from {len(studies)} studies; one SR reports on one study")
    by_uid = {str(src.SOPInstanceUID): src for src in sources}
    for p in predictions:
        if p.sop_instance_uid not in by_uid:
            raise ValueError(f"prediction of {p.model_name!r} refers to an image not among the sources")
        if p.model_name not in cards:
            raise ValueError(f"no model card for model {p.model_name!r}")
    return by_uid


def _observation_context(manufacturer: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uids.device_uid(),
        name=DEVICE_NAME,
        manufacturer_name=manufacturer,
        model_name=DEVICE_NAME,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )


def _measurement_group(
    p: Prediction, source: pydicom.Dataset, card: ModelCard, sr_uid: str, index: int
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for one prediction; its tracking UID is derived from the SR UID, so rebuilds match."""
    side = p.laterality.upper() if p.laterality else None
    key = f"{p.model_name}@{p.model_version}|{p.sop_instance_uid}|{side or '-'}"
    evaluations = [hd.sr.QualitativeEvaluation(codes.task_concept(p.task), codes.label_concept(card, p.label))]
    if side:
        evaluations.append(hd.sr.QualitativeEvaluation(codes.LATERALITY, codes.laterality_concept(side)))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(sr_uid, key),
            identifier=f"{p.task} {side + ' ' if side else ''}#{index}",
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(name=p.model_name, version=p.model_version),
        qualitative_evaluations=evaluations,
        measurements=[hd.sr.Measurement(name=codes.PROBABILITY, value=float(p.probability), unit=codes.NO_UNITS)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def _text_container(text: str) -> hd.sr.ContainerContentItem:
    """TID 1500's "Qualitative Evaluations" container holding the report text as one TEXT item."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.REPORT_TEXT,
                value=text,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return container


def _evidence(src: pydicom.Dataset) -> pydicom.Dataset:
    """The source's header without pixel data, with absent Type 2 patient/study attributes present but empty.

    highdicom copies patient and study information from the evidence and reads a few attributes unconditionally;
    a header-only copy also keeps a fully read 15 MB radiograph from being deep-copied.
    """
    header = pydicom.Dataset()
    for element in src:
        if element.tag.group < 0x7FE0:
            header.add(element)
    for keyword in _TYPE2_HEADER:
        if keyword not in header:
            setattr(header, keyword, None)
    return header
