"""reporting.sr (+ codes): an SR built from real radiographs reads back with highdicom and passes dciodvfy."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from predictd.models.card import Applicability, Label, ModelCard
from predictd.models.prediction import Prediction
from predictd.reporting import codes, uids
from predictd.reporting.key_images import build_key_image
from predictd.reporting.sr import build_sr
from predictd.reporting.text import report_text
from tests.support import CR_JLSL, assert_dciodvfy_clean, pydicom_data_file

HIP = ModelCard(
    name="hip",
    version="1.0",
    task="hip_hardware",
    arch="x",
    labels=(
        Label("none", "no hip hardware"),
        Label("tha", "total hip arthroplasty"),
        # A card-supplied code (here the SNOMED CT concept a card author would have verified).
        Label("hemi", "hemiarthroplasty", code_value="66546002", code_scheme="SCT", code_meaning="Hemiarthroplasty"),
    ),
    applies_to=Applicability(body_parts=("hip_pelvis", "femur")),
)
ANY_PART = ModelCard(
    name="implant",
    version="2",
    task="implant_presence",
    arch="x",
    labels=(Label("absent", "no implant"), Label("present", "implant present")),
)
CARDS = {"hip": HIP, "implant": ANY_PART}
HIP_JOINT = hd.sr.CodedConcept("24136001", "SCT", "Hip joint")


def cid_codes(cid: int) -> list[Code]:
    """The concepts of one context group, as pydicom's code dictionary (the DICOM standard's tables) has them."""
    return list(getattr(dcm_codes, f"cid{cid}").concepts.values())


@pytest.fixture(scope="module")
def hip() -> pydicom.Dataset:
    return pydicom.dcmread(CR_JLSL, stop_before_pixels=True)


@pytest.fixture(scope="module")
def hip_other_series(hip: pydicom.Dataset) -> pydicom.Dataset:
    """A second image of the same study in another series (same header, new series and instance UIDs)."""
    other = copy.deepcopy(hip)
    other.SeriesInstanceUID = uids.derived_uid("test-series", hip.SeriesInstanceUID)
    other.SOPInstanceUID = uids.derived_uid("test-instance", hip.SOPInstanceUID)
    other.SeriesNumber = 2
    return other


def _p(
    src: pydicom.Dataset, label: str, probability: float, laterality: str | None = None, card: ModelCard = HIP
) -> Prediction:
    return Prediction(
        model_name=card.name,
        model_version=card.version,
        task=card.task,
        sop_instance_uid=str(src.SOPInstanceUID),
        series_instance_uid=str(src.SeriesInstanceUID),
        label=label,
        probability=probability,
        laterality=laterality,
    )


def _build(sources: Sequence[pydicom.Dataset], preds: Sequence[Prediction], **kwargs: object) -> pydicom.Dataset:
    study = str(sources[0].StudyInstanceUID)
    return build_sr(
        sources,
        preds,
        CARDS,
        report_text=report_text(preds, CARDS),
        sop_instance_uid=uids.sr_instance_uid(study, 1, "hip@1.0"),
        series_instance_uid=uids.sr_series_uid(study),
        **kwargs,  # type: ignore[arg-type]
    )


def _write_and_read(sr: pydicom.Dataset, tmp_path: Path) -> tuple[Path, hd.sr.ComprehensiveSR]:
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    back = hd.sr.srread(path)
    assert isinstance(back, hd.sr.ComprehensiveSR)
    return path, back


def _groups(sr: pydicom.Dataset) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    report = hd.sr.MeasurementReport.from_sequence([sr])
    return report.get_image_measurement_groups()


def _coded(evaluation: hd.sr.QualitativeEvaluation) -> hd.sr.CodedConcept:
    """The coded value (highdicom annotates ``QualitativeEvaluation.value`` as a number)."""
    value = evaluation[0].value
    assert isinstance(value, hd.sr.CodedConcept)
    return value


def _text_items(sr: hd.sr.ComprehensiveSR) -> list[str]:
    containers = hd.sr.utils.find_content_items(sr, name=codes.QUALITATIVE_EVALUATIONS)
    assert len(containers) == 1
    return [item.TextValue for item in containers[0].ContentSequence if item.ValueType == "TEXT"]


def test_sr_content_reads_back(hip: pydicom.Dataset, tmp_path: Path) -> None:
    preds = [_p(hip, "tha", 0.934, laterality="R"), _p(hip, "hemi", 0.71, laterality="L")]
    sr = _build([hip], preds, institution_name="Test Hospital")
    _, back = _write_and_read(sr, tmp_path)

    groups = _groups(back)
    assert len(groups) == 2
    by_side = {}
    for group in groups:
        [site] = group.finding_sites
        assert site.value == HIP_JOINT  # the card's first body part
        assert site.laterality is not None
        by_side[site.laterality.meaning] = group
        assert not group.get_qualitative_evaluations(name=codes.LATERALITY)  # only a modifier of the site now
        [measurement] = group.get_measurements(name=codes.PROBABILITY)
        assert measurement.unit == codes.NO_UNITS
        assert [s.referenced_sop_instance_uid for s in group.source_images] == [hip.SOPInstanceUID]
        algorithm = {item.name.meaning: item.value for item in group[0].ContentSequence if item.ValueType == "TEXT"}
        assert algorithm["Algorithm Name"] == "hip"
        assert algorithm["Algorithm Version"] == "1.0"

    right = by_side["Right"].get_qualitative_evaluations(name=codes.task_concept("hip_hardware"))
    assert right[0].value == codes.label_concept(HIP, "tha")
    assert _coded(right[0]).scheme_designator == codes.SCHEME
    assert by_side["Right"].get_measurements(name=codes.PROBABILITY)[0].value == pytest.approx(0.934)
    left = by_side["Left"].get_qualitative_evaluations(name=codes.task_concept("hip_hardware"))
    assert left[0].value == hd.sr.CodedConcept("66546002", "SCT", "Hemiarthroplasty")
    assert by_side["Left"].get_measurements(name=codes.PROBABILITY)[0].value == pytest.approx(0.71)


def test_sr_header(hip: pydicom.Dataset, tmp_path: Path) -> None:
    sr = _build([hip], [_p(hip, "tha", 0.9)], institution_name="Test Hospital", manufacturer="ACME predictd")
    _, back = _write_and_read(sr, tmp_path)
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        assert back.get(keyword) == hip.get(keyword), keyword
    assert back.Modality == "SR"
    assert back.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert back.VerificationFlag == "UNVERIFIED"
    assert back.CompletionFlag == "PARTIAL"
    assert back.PreliminaryFlag == "PRELIMINARY"
    assert back.Manufacturer == "ACME predictd"
    assert back.InstitutionName == "Test Hospital"
    assert back.SeriesDescription == "predictd AI result (unverified)"
    assert back.SeriesNumber == 9901
    assert back.SOPInstanceUID == uids.sr_instance_uid(hip.StudyInstanceUID, 1, "hip@1.0")
    assert back.SeriesInstanceUID == uids.sr_series_uid(hip.StudyInstanceUID)
    assert [item.CodingSchemeDesignator for item in back.CodingSchemeIdentificationSequence] == [codes.SCHEME]
    [evidence] = back.CurrentRequestedProcedureEvidenceSequence
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert referenced == hip.SOPInstanceUID
    device = hd.sr.MeasurementReport.from_sequence(back.content).get_observer_contexts(dcm_codes.DCM.Device)
    assert device[0].observer_identifying_attributes[0].value == uids.device_uid()


def test_report_text_in_sr(hip: pydicom.Dataset, tmp_path: Path) -> None:
    preds = [_p(hip, "tha", 0.934)]
    sr = _build([hip], preds)
    _, back = _write_and_read(sr, tmp_path)
    assert _text_items(back) == [report_text(preds, CARDS)]
    assert "not verified by a radiologist" in _text_items(back)[0]


def test_sr_passes_dciodvfy(hip: pydicom.Dataset, tmp_path: Path) -> None:
    preds = [_p(hip, "tha", 0.934, laterality="R"), _p(hip, Prediction.INDETERMINATE, 0.4, laterality="L")]
    path, _ = _write_and_read(_build([hip], preds, institution_name="Test Hospital"), tmp_path)
    assert_dciodvfy_clean(path)


def test_two_series_in_one_sr(hip: pydicom.Dataset, hip_other_series: pydicom.Dataset, tmp_path: Path) -> None:
    preds = [_p(hip, "tha", 0.9), _p(hip_other_series, "tha", 0.8)]
    path, back = _write_and_read(_build([hip, hip_other_series], preds), tmp_path)
    referenced = {s.referenced_sop_instance_uid for g in _groups(back) for s in g.source_images}
    assert referenced == {hip.SOPInstanceUID, hip_other_series.SOPInstanceUID}
    [evidence] = back.CurrentRequestedProcedureEvidenceSequence
    assert {s.SeriesInstanceUID for s in evidence.ReferencedSeriesSequence} == {
        hip.SeriesInstanceUID,
        hip_other_series.SeriesInstanceUID,
    }
    assert_dciodvfy_clean(path)


def test_fully_read_source_with_pixels(tmp_path: Path) -> None:
    src = pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm"))
    path, back = _write_and_read(_build([src], [_p(src, "none", 0.97)]), tmp_path)
    assert "PixelData" not in back
    assert back.PatientID == src.PatientID
    assert "PixelData" in src  # the caller's dataset is left alone
    assert_dciodvfy_clean(path)
    from_dataset = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(path))
    assert from_dataset.SOPInstanceUID == back.SOPInstanceUID


def test_rebuild_gives_same_uids(hip: pydicom.Dataset) -> None:
    preds = [_p(hip, "tha", 0.9, laterality="R")]
    first, second = _build([hip], preds), _build([hip], preds)
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert [g.tracking_uid for g in _groups(first)] == [g.tracking_uid for g in _groups(second)]


def test_inconsistent_inputs_are_rejected(hip: pydicom.Dataset) -> None:
    rg1 = pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    with pytest.raises(ValueError, match="studies"):
        _build([hip, rg1], [_p(hip, "tha", 0.9)])
    with pytest.raises(ValueError, match="not among the sources"):
        _build([hip], [_p(rg1, "tha", 0.9)])
    with pytest.raises(ValueError, match="at least one prediction"):
        build_sr([hip], [], CARDS, report_text="x", sop_instance_uid="2.25.1", series_instance_uid="2.25.2")


def _find(
    item: pydicom.Dataset | hd.sr.MeasurementsAndQualitativeEvaluations, name: hd.sr.CodedConcept | Code
) -> list[pydicom.Dataset]:
    """Content items named ``name`` anywhere below ``item`` (a measurement group's container, or any content item)."""
    if isinstance(item, hd.sr.MeasurementsAndQualitativeEvaluations):
        item = item[0]
    if "ContentSequence" not in item:
        return []
    return hd.sr.utils.find_content_items(item, name=name, recursive=True)


def _key_image(src: pydicom.Dataset, p: Prediction, sr_uid: str) -> hd.sc.SCImage:
    overlay = np.zeros((48, 40, 3), dtype=np.uint8)
    overlay[..., 0] = 200
    return build_key_image(src, p, CARDS[p.model_name], overlay, sr_uid=sr_uid, instance_number=1, legend=False)


def test_laterality_is_a_finding_site_modifier(hip: pydicom.Dataset) -> None:
    preds = [
        _p(hip, "tha", 0.9, laterality="L"),
        _p(hip, "tha", 0.8),
        _p(hip, "present", 0.7, laterality="R", card=ANY_PART),
        _p(hip, "absent", 0.6, card=ANY_PART),
    ]
    groups = _groups(_build([hip], preds))
    sites = [_find(g, dcm_codes.SCT.FindingSite) for g in groups]
    assert [len(found) for found in sites] == [1, 1, 1, 0]  # any-body-part model, side unknown: no site at all
    assert [found[0].ConceptCodeSequence[0].CodeValue for found in sites[:3]] == [
        "24136001",  # (SCT, Hip joint): CID 4031
        "24136001",
        codes.SITE_IMAGED.value,  # side known, region not: the private "imaged region" concept
    ]
    lateralities = [_find(found[0], codes.LATERALITY) for found in sites[:3]]
    assert [[item.ConceptCodeSequence[0].CodeMeaning for item in found] for found in lateralities] == [
        ["Left"],
        [],
        ["Right"],
    ]
    assert all(item.RelationshipType == "HAS CONCEPT MOD" for found in lateralities for item in found)


def test_contributing_equipment_names_predictd_with_device_uid(hip: pydicom.Dataset, tmp_path: Path) -> None:
    preds = [_p(hip, "tha", 0.9), _p(hip, "present", 0.8, card=ANY_PART)]
    _, back = _write_and_read(_build([hip], preds, manufacturer="ACME", institution_name="Test Hospital"), tmp_path)
    ours = [item for item in back.ContributingEquipmentSequence if item.get("DeviceUID") == uids.device_uid()]
    assert len(ours) == 1
    [item] = ours
    [purpose] = item.PurposeOfReferenceCodeSequence
    # (109102, DCM, "Processing Equipment") is CID 7005's term; CID 7005 has no "Processing Algorithm" concept
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
    assert hd.sr.CodedConcept.from_code(dcm_codes.DCM.ProcessingEquipment) in [
        hd.sr.CodedConcept.from_code(c) for c in cid_codes(7005)
    ]
    assert item.Manufacturer == "ACME"
    assert item.ManufacturerModelName == "predictd"
    assert item.InstitutionName == "Test Hospital"
    assert list(item.SoftwareVersions)[1:] == ["hip@1.0", "implant@2"]
    assert "hip@1.0" in item.ContributionDescription


def test_predecessor_documents_sequence(hip: pydicom.Dataset, tmp_path: Path) -> None:
    study = str(hip.StudyInstanceUID)
    earlier = uids.sr_instance_uid(study, 1, "hip@1.0")
    sr = build_sr(
        [hip],
        [_p(hip, "tha", 0.9)],
        CARDS,
        report_text="x",
        sop_instance_uid=uids.sr_instance_uid(study, 2, "hip@1.0"),
        series_instance_uid=uids.sr_series_uid(study),
        instance_number=2,
        predecessor_sr_uid=earlier,
    )
    path, back = _write_and_read(sr, tmp_path)
    [study_item] = back.PredecessorDocumentsSequence
    assert study_item.StudyInstanceUID == study
    [series_item] = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == uids.sr_series_uid(study)
    [instance_item] = series_item.ReferencedSOPSequence
    assert instance_item.ReferencedSOPInstanceUID == earlier
    assert instance_item.ReferencedSOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert "PredecessorDocumentsSequence" not in _build([hip], [_p(hip, "tha", 0.9)])
    assert_dciodvfy_clean(path)


def test_key_images_are_referenced_from_their_findings(hip: pydicom.Dataset, tmp_path: Path) -> None:
    study = str(hip.StudyInstanceUID)
    sr_uid = uids.sr_instance_uid(study, 2, "hip@1.0")
    preds = [_p(hip, "tha", 0.9, laterality="R"), _p(hip, Prediction.INDETERMINATE, 0.4, laterality="L")]
    key_image = _key_image(hip, preds[0], sr_uid)
    sr = build_sr(
        [hip],
        preds,
        CARDS,
        report_text=report_text(preds, CARDS),
        sop_instance_uid=sr_uid,
        series_instance_uid=uids.sr_series_uid(study),
        instance_number=2,
        predecessor_sr_uid=uids.sr_instance_uid(study, 1, "hip@1.0"),
        key_images={0: key_image},
    )
    path, back = _write_and_read(sr, tmp_path)
    right, left = _groups(back)
    [item] = _find(right, codes.BEST_ILLUSTRATION)
    assert item.ValueType == "IMAGE" and item.RelationshipType == "CONTAINS"
    assert item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == key_image.SOPInstanceUID
    assert item.ReferencedSOPSequence[0].ReferencedSOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert _find(left, codes.BEST_ILLUSTRATION) == []
    # the overlay is no source of the measurement: the group still names only the radiograph as its source
    assert [s.referenced_sop_instance_uid for s in right.source_images] == [hip.SOPInstanceUID]
    # the key image is evidence of the SR, in its own series of the same study
    [evidence] = back.CurrentRequestedProcedureEvidenceSequence
    series = {s.SeriesInstanceUID: s for s in evidence.ReferencedSeriesSequence}
    assert set(series) == {hip.SeriesInstanceUID, uids.key_image_series_uid(study)}
    [ref] = series[uids.key_image_series_uid(study)].ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == key_image.SOPInstanceUID
    assert_dciodvfy_clean(path)


def test_key_image_checks(hip: pydicom.Dataset) -> None:
    p = _p(hip, "tha", 0.9)
    key_image = _key_image(hip, p, "2.25.1")
    with pytest.raises(ValueError, match="key image for prediction 3"):
        _build([hip], [p], key_images={3: key_image})
    rg1 = pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    with pytest.raises(ValueError, match="another study"):
        _build([hip], [p], key_images={0: _key_image(rg1, _p(rg1, "tha", 0.9), "2.25.1")})


def test_not_assessed_is_a_coded_non_finding_with_its_reason(hip: pydicom.Dataset, tmp_path: Path) -> None:
    refused = Prediction(
        **{**_p(hip, Prediction.NOT_ASSESSED, 0.99).to_dict(), "gate_score": 5.0, "gate_threshold": 1.0}
    )
    path, back = _write_and_read(_build([hip], [refused, _p(hip, "tha", 0.9, laterality="L")]), tmp_path)
    groups = _groups(back)
    values = [_coded(group.get_qualitative_evaluations()[0]) for group in groups]
    assert values[0] == codes.NOT_ASSESSED and values[1] != codes.NOT_ASSESSED
    assert not groups[0].get_measurements(name=codes.PROBABILITY), "no probability of a class it may not name"
    assert groups[1].get_measurements(name=codes.PROBABILITY)
    reasons = hd.sr.utils.find_content_items(groups[0][0], name=codes.NOT_ASSESSED_REASON)
    assert [item.TextValue for item in reasons] == [refused.not_assessed_reason]
    assert "not assessed" in _text_items(back)[0]
    assert_dciodvfy_clean(path)
