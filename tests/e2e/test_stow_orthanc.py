"""STOW-RS to a real Orthanc (DICOMweb plugin): predictd's own SR and a real radiograph are indexed under their UIDs.

A real Orthanc because the mapping in daemon.destinations.stow is only as good as its agreement with what a real
DICOMweb server answers: its status codes, its DICOM JSON body, and that stowing the same object again is harmless
(the outbox retries after a lost answer, so a second POST of a stored instance must not become an error).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from predictd.daemon.config_send import StowDestination
from predictd.daemon.destinations import SendError
from predictd.daemon.destinations.stow import stow_file
from predictd.models.card import Label, ModelCard
from predictd.models.prediction import Prediction
from predictd.reporting import uids
from predictd.reporting.sr import build_sr
from predictd.reporting.text import report_text
from tests.e2e.orthanc import OrthancServer
from tests.integration.pipeline_helpers import copy_as_new_study
from tests.support import CR_JLSL

pytestmark = pytest.mark.e2e

HIP = ModelCard(
    name="hip",
    version="1.0",
    task="hip_hardware",
    arch="x",
    labels=(Label("none", "no hip hardware"), Label("tha", "total hip arthroplasty")),
)


def _sr_file(source: pydicom.Dataset, path: Path) -> Path:
    """An SR built by predictd's own builder for one prediction on ``source``, written as a Part 10 file."""
    study = str(source.StudyInstanceUID)
    prediction = Prediction(
        model_name=HIP.name,
        model_version=HIP.version,
        task=HIP.task,
        sop_instance_uid=str(source.SOPInstanceUID),
        series_instance_uid=str(source.SeriesInstanceUID),
        label="tha",
        probability=0.93,
        laterality="R",
    )
    sr = build_sr(
        [source],
        [prediction],
        {HIP.name: HIP},
        report_text=report_text([prediction], {HIP.name: HIP}),
        sop_instance_uid=uids.sr_instance_uid(study, 1, "hip@1.0"),
        series_instance_uid=uids.sr_series_uid(study),
    )
    sr.save_as(path, enforce_file_format=True)
    return path


def _indexed(pacs: OrthancServer, modality: str) -> list[str]:
    """SOP Instance UIDs of the instances Orthanc indexed in series of ``modality``."""
    return sorted(str(pacs.simplified_tags(i)["SOPInstanceUID"]) for i in pacs.find_instances(modality))


def test_sr_and_radiograph_stowed_to_orthanc_are_indexed_once(tmp_path: Path) -> None:
    image = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    source = pydicom.dcmread(image, stop_before_pixels=True)
    sr_path = _sr_file(source, tmp_path / "sr.dcm")
    sr_uid = str(pydicom.dcmread(sr_path).SOPInstanceUID)
    with OrthancServer(tmp_path / "orthanc") as pacs:
        dest = StowDestination(type="stow", name="orthanc", url=f"{pacs.base_url}/dicom-web/", timeout_seconds=60)
        for _ in range(2):  # the second round is the outbox resending after a lost answer: harmless
            stow_file(sr_path, dest)
            stow_file(image, dest)
        srs = pacs.find_instances("SR")
        assert _indexed(pacs, "SR") == [sr_uid]
        assert _indexed(pacs, "CR") == [str(source.SOPInstanceUID)]
        stored_sr = pacs.instance_file(srs[0])
        study = pacs.rest_get(f"/studies/{pacs.wait_study_id(str(source.StudyInstanceUID))}")
    assert len(study["Series"]) == 2  # the SR landed in the radiograph's study, in a series of its own
    assert stored_sr == sr_path.read_bytes()  # Part 10 as-is: Orthanc stored exactly what was sent


def test_wrong_dicomweb_path_is_a_permanent_error(tmp_path: Path) -> None:
    image = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    with OrthancServer(tmp_path / "orthanc") as pacs:
        url = f"{pacs.base_url}/not-dicom-web"
        with pytest.raises(SendError) as info:
            stow_file(image, StowDestination(type="stow", name="orthanc", url=url, timeout_seconds=60))
        assert pacs.rest_get("/instances") == []
    assert not info.value.retryable
    assert "HTTP 404" in str(info.value)
    assert f"{url}/studies" in str(info.value)
