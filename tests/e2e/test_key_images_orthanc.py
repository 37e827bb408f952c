"""Key images and DICOMweb with a real PACS.

A modality stores a radiograph in Orthanc; Orthanc's auto-forward sends it to predictd; predictd STOWs its SR and its
Grad-CAM Secondary Captures back, and Orthanc indexes them in the source study. When Orthanc then sends predictd's
own key image back (a PACS forwarding everything), predictd acknowledges it and classifies nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from tests.e2e.orthanc import OrthancServer, storescu
from tests.e2e.predictd_proc import PredictdServer
from tests.integration.pipeline_helpers import copy_as_new_study
from tests.support import CR_JLSL, free_port, wait_until

pytestmark = pytest.mark.e2e

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _by_sop_class(pacs: OrthancServer, study_id: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for instance in pacs.rest_get(f"/studies/{study_id}/instances"):
        tags: dict[str, Any] = pacs.simplified_tags(instance["ID"])
        found.setdefault(tags["SOPClassUID"], []).append(instance["ID"])
    return found


def test_sr_and_key_images_stowed_into_orthanc_and_not_taken_back(tmp_path: Path) -> None:
    src = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    source = pydicom.dcmread(src, stop_before_pixels=True)
    predictd_port = free_port()
    with OrthancServer(tmp_path / "orthanc", predictd=("PREDICTD", predictd_port), stable_age=1) as pacs:
        stow = {"type": "stow", "name": "pacs-web", "url": f"http://127.0.0.1:{pacs.http_port}/dicom-web"}
        server = PredictdServer(tmp_path / "predictd", port=predictd_port, destinations=[stow], key_images=True)
        with server as predictd:
            storescu(pacs.dicom_port, pacs.aet, [src])
            study_id = pacs.wait_study_id(source.StudyInstanceUID)

            def results_in_pacs() -> dict[str, list[str]] | None:
                found = _by_sop_class(pacs, study_id)
                return found if COMPREHENSIVE_SR in found and SECONDARY_CAPTURE in found else None

            found = wait_until(
                results_in_pacs,
                timeout=120,
                interval=0.5,
                what="the SR and key images in Orthanc",
            )
            assert predictd.study_state(source.StudyInstanceUID) == "done"
            assert len(found[COMPREHENSIVE_SR]) == 1
            key_images = found[SECONDARY_CAPTURE]
            sc = pydicom.dcmread(DicomBytesIO(pacs.instance_file(key_images[0])))
            assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.BurnedInAnnotation == "YES"
            sr = pydicom.dcmread(DicomBytesIO(pacs.instance_file(found[COMPREHENSIVE_SR][0])))
            assert str(sc.SOPInstanceUID) in str(sr)  # the SR references its key image

            # Orthanc forwards everything, our key image included: acknowledged, nothing new to classify.
            pacs.rest_post("/modalities/PREDICTD/store", {"Resources": key_images, "Synchronous": True})
            wait_until(lambda: "own output" in predictd.log_text(), timeout=30, what="the key image to be dropped")
            ls = predictd.queue_ls()
    assert [(r["study_uid"], r["run_no"], r["state"]) for r in ls] == [(source.StudyInstanceUID, 1, "done")]
