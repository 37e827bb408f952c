"""The round trip predictd exists for, with real peers on loopback and free ports only.

dcmtk storescu (the modality) → Orthanc (the PACS) → Lua auto-forward of the stable study → `predictd serve` →
classify → SR → C-STORE back into Orthanc, where it is found over the REST API, referencing the source instance
and passing dciodvfy; and the SR coming back does not make Orthanc forward the study again.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from tests.e2e.orthanc import OrthancServer, storescu
from tests.e2e.predictd_proc import PredictdServer
from tests.integration.pipeline_helpers import copy_as_new_study
from tests.support import CR_JLSL, free_port, wait_until

pytestmark = pytest.mark.e2e


def test_cr_study_forwarded_by_orthanc_comes_back_as_an_sr(tmp_path: Path) -> None:
    src = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    source = pydicom.dcmread(src, stop_before_pixels=True)
    predictd_port = free_port()
    with OrthancServer(tmp_path / "orthanc", predictd=("PREDICTD", predictd_port), stable_age=1) as pacs:
        destination = {"name": "orthanc", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
        with PredictdServer(tmp_path / "predictd", port=predictd_port, destinations=[destination]) as predictd:
            storescu(pacs.dicom_port, pacs.aet, [src])
            study_id = pacs.wait_study_id(source.StudyInstanceUID)
            srs = wait_until(lambda: pacs.find_instances("SR"), timeout=120, interval=0.5, what="the SR in Orthanc")
            assert predictd.study_state(source.StudyInstanceUID) == "done"
            # The SR made the study stable again; the script ran and forwarded nothing (no loop).
            wait_until(lambda: len(pacs.forward_summaries(study_id)) >= 2, timeout=60, what="the second stable event")
            assert "sent 0" in pacs.forward_summaries(study_id)[-1]
            assert len(pacs.find_instances("SR")) == 1
            ls = predictd.queue_ls()
        raw = pacs.instance_file(srs[0])
    assert [(r["study_uid"], r["run_no"], r["state"]) for r in ls] == [(source.StudyInstanceUID, 1, "done")]
    sr = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(DicomBytesIO(raw)))
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID
    assert source.SOPInstanceUID in str(sr)
    assert sr.VerificationFlag == "UNVERIFIED"
    sr_file = tmp_path / "sr.dcm"
    sr_file.write_bytes(raw)
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(sr_file)], capture_output=True, text=True).stderr
        assert not [line for line in out.splitlines() if line.startswith("Error")], out
