"""The DICOM Comprehensive SR that carries predictd's results back to the PACS.

Built only from highdicom template classes, so the structure is TID 1500 "Measurement Report" as highdicom (and
every TID 1500 reader) understands it:

- observation context: predictd as the device observer (TID 1004), with a fixed device UID;
- procedure reported: (43468-8, LN, "XR unspecified body region");
- one TID 1501 measurement group per prediction, i.e. per (model, image, side), holding the algorithm (TID 4019 name
  and version), the source image reference, a finding site (the card's body region, laterality as its modifier), a
  qualitative evaluation task concept → label concept, and the probability as (122157, DCM, "Probability") in
  UCUM "1" (an image the model's domain gate refused gets the value "not assessed", no probability, and a TEXT
  item with the reason); when a key image (Grad-CAM overlay, reporting.key_images) explains the finding, an IMAGE item
  (121080, DCM, "Best illustration of finding") referencing it;
- the prepopulated report text as a TEXT item in TID 1500's document-level "Qualitative Evaluations" container.
  highdicom's MeasurementReport constructor has no argument for that row, so the container is appended to the
  template's root after construction, built from highdicom content items.

The header carries, as IHE AIR asks, a Contributing Equipment item for predictd (purpose "Processing Equipment",
manufacturer, model, software and model versions, and predictd's Device UID: the receiver recognises our own output
by it when a PACS forwards it back), and, when the study was reported before (late images opened a new run), the
earlier SR in the Predecessor Documents Sequence.

The document is marked UNVERIFIED, PARTIAL and PRELIMINARY: nobody accountable has read it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence

import highdicom as hd
import pydicom
from pydicom.dataelem import DataElement
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.valuerep import DA, DT, TM

from predictd.models.card import ModelCard
from predictd.models.prediction import Prediction
from predictd.reporting import codes, uids

DEVICE_NAME = "predictd"


def _installed_version() -> str:
    try:
        return importlib.metadata.version("predictd")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


SOFTWARE_VERSION = _installed_version()
"""predictd's version, as Software Versions of the SR, the key images and their Contributing Equipment item."""

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
    software_version: str = SOFTWARE_VERSION,
    predecessor_sr_uid: str | None = None,
    key_images: Mapping[int, pydicom.Dataset] | None = None,
    not_assessed_reason: str | None = None,
    considered_models: Sequence[str] = (),
) -> pydicom.Dataset:
    """One Comprehensive SR for one study's predictions.

    ``sources`` are the study's images (read with or without pixels); each prediction must refer to one of them by
    SOP Instance UID and its model must be in ``cards``. Patient and study attributes are copied from the first
    source. ``predecessor_sr_uid`` is the SOP Instance UID of the SR an earlier run of this study sent (same SR
    series, :func:`reporting.uids.sr_series_uid`): this document supersedes it. ``key_images`` maps a prediction's
    index in ``predictions`` to the key image (Secondary Capture, :mod:`reporting.key_images`) that explains it.
    ``not_assessed_reason``: no model applied to the study (``predictions`` may then be empty): one measurement
    group says "not assessed" with the reason, and ``considered_models`` ("name@version") are the models that were
    installed and did not apply.
    Raises ValueError on an empty or inconsistent input rather than sending a misleading document.
    """
    sources = [_evidence(src) for src in sources]  # headers only, with what highdicom needs and DICOM allows
    by_uid = _check_inputs(sources, predictions, cards, allow_none=not_assessed_reason is not None)
    images = dict(key_images or {})
    _check_key_images(sources, predictions, images)
    groups = [
        _measurement_group(
            p, by_uid[p.sop_instance_uid], cards[p.model_name], sop_instance_uid, index, images.get(index - 1)
        )
        for index, p in enumerate(predictions, start=1)
    ]
    if not_assessed_reason is not None:
        groups.append(_not_assessed_group(sources[0], not_assessed_reason, sop_instance_uid, software_version))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(manufacturer),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_text_container(report_text))
    study_uid = str(sources[0].StudyInstanceUID)
    equipment = predictd_equipment(
        manufacturer,
        software_version,
        sorted({f"{p.model_name}@{p.model_version}" for p in predictions} | set(considered_models)),
        institution_name=institution_name,
    )
    return hd.sr.ComprehensiveSR(
        evidence=[*sources, *(_evidence(image) for image in images.values())],
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
        contributing_equipment=[equipment],
        previous_versions=[_predecessor(study_uid, predecessor_sr_uid)] if predecessor_sr_uid else None,
    )


def predictd_equipment(
    manufacturer: str,
    software_version: str,
    models: Sequence[str],
    *,
    institution_name: str | None = None,
) -> hd.ContributingEquipment:
    """The Contributing Equipment item (PS3.3 C.12.1.1) naming predictd and its models, with our Device UID.

    IHE AIR asks for the algorithm's manufacturer, model, software version and device UID here. ``models`` are
    "name@version" strings; they join predictd's version in Software Versions (multi-valued, one per piece of
    software). highdicom has no argument for Device UID (0018,1002), so it is set on the item afterwards.
    """
    versions = [software_version, *(m[:64] for m in models)]
    item = hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=DEVICE_NAME,
        software_versions=versions,
        institution_name=institution_name,
        contribution_description=_truncate(f"AI inference ({', '.join(models)})", 1024),
    )
    item.DeviceUID = uids.device_uid()
    return item


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _predecessor(study_uid: str, sr_uid: str) -> pydicom.Dataset:
    """The header of the earlier run's SR, as far as the Predecessor Documents Sequence needs it.

    Every predictd SR of a study is a Comprehensive SR in the study's one SR series, so the UID is enough.
    """
    earlier = pydicom.Dataset()
    earlier.StudyInstanceUID = study_uid
    earlier.SeriesInstanceUID = uids.sr_series_uid(study_uid)
    earlier.SOPClassUID = pydicom.uid.ComprehensiveSRStorage
    earlier.SOPInstanceUID = sr_uid
    return earlier


def _check_inputs(
    sources: Sequence[pydicom.Dataset],
    predictions: Sequence[Prediction],
    cards: Mapping[str, ModelCard],
    *,
    allow_none: bool = False,
) -> dict[str, pydicom.Dataset]:
    if not sources:
        raise ValueError("an SR needs at least one source image")
    if not predictions and not allow_none:
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


def _check_key_images(
    sources: Sequence[pydicom.Dataset], predictions: Sequence[Prediction], images: Mapping[int, pydicom.Dataset]
) -> None:
    study = str(sources[0].StudyInstanceUID)
    for index, image in images.items():
        if not 0 <= index < len(predictions):
            raise ValueError(f"key image for prediction {index}, but there are {len(predictions)} predictions")
        if str(image.StudyInstanceUID) != study:
            raise ValueError("a key image belongs to another study than the sources")


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
    p: Prediction,
    source: pydicom.Dataset,
    card: ModelCard,
    sr_uid: str,
    index: int,
    key_image: pydicom.Dataset | None = None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for one prediction; its tracking UID is derived from the SR UID, so rebuilds match."""
    side = p.laterality.upper() if p.laterality else None
    key = uids.finding_key(f"{p.model_name}@{p.model_version}", p.sop_instance_uid, side, p.region)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(sr_uid, key),
            identifier=f"{p.task} {side + ' ' if side else ''}#{index}",
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(name=p.model_name, version=p.model_version),
        finding_sites=_finding_sites(card, side),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.task_concept(p.task), codes.label_concept(card, p.label))
        ],
        # A refused image carries no probability: it would be the probability of a class the model may not name.
        measurements=None
        if p.is_not_assessed
        else [hd.sr.Measurement(name=codes.PROBABILITY, value=float(p.probability), unit=codes.NO_UNITS)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    if p.is_not_assessed:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.NOT_ASSESSED_REASON,
                value=p.not_assessed_reason,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    if key_image is not None:
        # TID 1501 is extensible. The overlay is referenced here, inside the finding it explains, as an IMAGE item
        # named "Best illustration of finding" (CID 7003), not as a source image (TID 1501's "Source of
        # Measurement": the probability was not measured on the overlay). SR viewers (OHIF, dcm4chee, Sectra,
        # Visage) draw an IMAGE item as a link or thumbnail next to the finding's other rows, so the reader opens
        # the overlay that belongs to that side and that model; a document-level list would lose that pairing.
        group[0].ContentSequence.append(
            hd.sr.ImageContentItem(
                name=codes.BEST_ILLUSTRATION,
                referenced_sop_class_uid=key_image.SOPClassUID,
                referenced_sop_instance_uid=key_image.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def _not_assessed_group(
    source: pydicom.Dataset, reason: str, sr_uid: str, software_version: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The one group of a study no model applied to: "AI assessment of the study" = not assessed, and why."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(sr_uid, "not-assessed"), identifier="not assessed"
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(name=DEVICE_NAME, version=software_version),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.AI_ASSESSMENT, codes.NOT_ASSESSED)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.NOT_ASSESSED_REASON, value=reason, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )
    return group


def _finding_sites(card: ModelCard, side: str | None) -> list[hd.sr.FindingSite] | None:
    """The card's body region as the finding site, the side as its laterality modifier (TID 1501 row 8).

    A card for any body part (none listed) gets a site only when the side is known, with the private "imaged
    region" concept as its location: laterality has no other place in TID 1501, and a real anatomic code there
    would be a guess.
    """
    site = codes.anatomic_site(card)
    if site is None and side is None:
        return None
    return [
        hd.sr.FindingSite(
            anatomic_location=site or codes.SITE_IMAGED,
            laterality=codes.laterality_concept(side) if side else None,
        )
    ]


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


_TEMPORAL = {"DA": DA, "TM": TM, "DT": DT}


def _unusable(src: pydicom.Dataset) -> list[DataElement]:
    bad = []
    for element in src:
        convert = _TEMPORAL.get(str(element.VR))
        if convert is None or element.VM != 1 or not str(element.value or "").strip():
            continue
        try:
            convert(str(element.value))
        except ValueError:
            bad.append(element)
    return bad


def unusable_dates(src: pydicom.Dataset) -> list[str]:
    """Keywords of the top-level dates and times of ``src`` that are not valid DICOM values (``ZQXDOB1923`` as a
    birth date): the SR's copy gets them empty, and the caller notes which (never the value)."""
    return [element.keyword or str(element.tag) for element in _unusable(src)]


def _evidence(src: pydicom.Dataset) -> pydicom.Dataset:
    """The source's header without pixel data, with absent Type 2 patient/study attributes present but empty.

    highdicom copies patient and study information from the evidence and reads a few attributes unconditionally;
    a header-only copy also keeps a fully read 15 MB radiograph from being deep-copied. A source without Modality
    (a film scan turned into a Secondary Capture by ``img2dcm``) gets "OT" (other), the defined term for what no other
    modality describes: highdicom reads it to refuse SR and other non-image sources. Dates and times that are not
    valid DICOM values are emptied (:func:`unusable_dates`).
    """
    header = pydicom.Dataset()
    for element in src:
        if element.tag.group < 0x7FE0:
            header.add(element)
    for element in _unusable(header):  # highdicom would raise, quoting the value, on a non-DICOM date
        header[element.tag] = DataElement(element.tag, element.VR, None)  # the source's own element stays
    for keyword in _TYPE2_HEADER:
        if keyword not in header:
            setattr(header, keyword, None)
    if not header.get("Modality"):
        header.Modality = "OT"
    return header
