"""`predictd serve` calls a study complete when its sender releases the association, not after the quiet window.

The quiet window is five minutes here: only the release can make the study ready within the deadlines below. Two
senders as a reading room has them: dcmtk storescu (a modality) and Orthanc's auto-forward of a stable study.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from tests.e2e.orthanc import OrthancServer, storescu
from tests.e2e.predictd_proc import PredictdServer
from tests.integration.pipeline_helpers import copy_as_new_study
from tests.support import CR_JLSL, free_port, wait_until

pytestmark = pytest.mark.e2e

QUIET = 300.0


def _history(server: PredictdServer, study_uid: str) -> list[str]:
    shown = server.cli("queue", "show", study_uid, "--json")
    assert shown.returncode == 0, shown.stderr
    return [e["kind"] for e in json.loads(shown.stdout)["events"]]


def test_storescu_release_makes_the_study_ready_at_once(tmp_path: Path) -> None:
    src = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    study_uid = str(pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID)
    with PredictdServer(tmp_path / "predictd", quiet_seconds=QUIET) as server:
        server.storescu(src)
        wait_until(lambda: server.study_state(study_uid) == "done", timeout=60, interval=0.2, what="the study done")
        history = _history(server, study_uid)
    assert "sender_done" in history and history.index("sender_done") < history.index("claimed")


def test_orthanc_forward_release_makes_the_study_ready_at_once(tmp_path: Path) -> None:
    src = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    study_uid = str(pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID)
    port = free_port()
    with OrthancServer(tmp_path / "orthanc", predictd=("PREDICTD", port), stable_age=1) as pacs:
        destination = {"name": "orthanc", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
        with PredictdServer(tmp_path / "p", port=port, destinations=[destination], quiet_seconds=QUIET) as server:
            storescu(pacs.dicom_port, pacs.aet, [src])
            wait_until(lambda: pacs.find_instances("SR"), timeout=90, interval=0.5, what="the SR back in Orthanc")
            assert "sender_done" in _history(server, study_uid)
