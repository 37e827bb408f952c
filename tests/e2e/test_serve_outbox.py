"""`predictd serve` with no destination: storescu of a real CR file → a `done` study and an SR in the outbox folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from tests.e2e.predictd_proc import PredictdServer
from tests.integration.pipeline_helpers import copy_as_new_study
from tests.support import CR_JLSL, wait_until

pytestmark = pytest.mark.e2e


def test_storescu_to_serve_yields_an_sr_in_the_outbox(tmp_path: Path) -> None:
    src = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    with PredictdServer(tmp_path / "predictd") as server:
        server.storescu(src)
        wait_until(
            lambda: server.study_state(ds.StudyInstanceUID) == "done",
            timeout=120,
            interval=0.5,
            what="the study to be done",
        )
        detail = server.cli("queue", "show", ds.StudyInstanceUID, "--json").stdout
        logs = server.log_text()
    (sr_file,) = (server.outbox / ds.StudyInstanceUID).glob("*.dcm")
    sr = hd.sr.srread(sr_file)
    assert sr.SOPInstanceUID in detail
    assert ds.SOPInstanceUID in str(sr)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "PARTIAL"
    for event in (
        "instance_stored",
        "study_ready",
        "study_claimed",
        "prediction_made",
        "sr_built",
        "sr_sent",
    ):
        assert f'"event": "{event}"' in logs, event
    # No PHI in the logs: the patient's name and ID from the image never appear.
    for phi in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
        if phi.strip():
            assert phi not in logs
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(sr_file)], capture_output=True, text=True).stderr
        assert not [line for line in out.splitlines() if line.startswith("Error")], out
    # Files at rest hold patient data: readable by predictd's user only, whatever the caller's umask was.
    written = [p for p in (server.root / "var").rglob("*")] + [p for p in server.outbox.rglob("*")]
    assert any(p.suffix == ".dcm" for p in written) and any(p.name == "predictd.db" for p in written)
    loose = {str(p): oct(p.stat().st_mode & 0o777) for p in written if p.stat().st_mode & 0o077}
    assert not loose, loose


def test_shipped_models_never_call_the_single_hip_cr_an_arthroplasty(tmp_path: Path) -> None:
    """The first real CR a new user sends (WG04 RG2, a single-hip view without arthroplasty) through `make serve`'s
    models: the draft says "no hip arthroplasty" or "not assessed", never THA; a key image only for a decision."""
    src = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    with PredictdServer(tmp_path / "predictd", shipped=True, key_images=True) as server:
        server.storescu(src)
        wait_until(lambda: server.study_state(ds.StudyInstanceUID) == "done", timeout=180, interval=0.5, what="done")
    (text_file,) = (server.outbox / ds.StudyInstanceUID).glob("*.txt")
    text = text_file.read_text()
    hip_line = next(line for line in text.splitlines() if line.startswith("Hip"))
    assert "not assessed" in hip_line or "no hip arthroplasty (probability" in hip_line, text
    assert "total hip arthroplasty" not in text and "resurfacing" not in text, text
    key_images = [p for p in (server.outbox / ds.StudyInstanceUID).glob("*.dcm") if p.name != f"{text_file.stem}.dcm"]
    assert bool(key_images) == ("not assessed" not in hip_line)
