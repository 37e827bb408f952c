"""The Orthanc harness and its Lua auto-forward, proven against real peers and without predictd.

dcmtk ``storescp`` poses as predictd. A real CR image sent to Orthanc must be forwarded exactly once, as-is
(JPEG-LS), and an SR arriving afterwards in the same study (what predictd sends back) must neither be forwarded
nor make the image go out again. That last property is what stops the PACS ⇄ predictd loop in production.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ComprehensiveSRStorage, Verification  # type: ignore[attr-defined]

from tests.e2e.orthanc import NODELAY_ENV, OrthancServer, storescu
from tests.support import CR_JLSL, free_port, wait_until

pytestmark = pytest.mark.e2e


def _echo(port: int, ae_title: str) -> bool:
    """C-ECHO, tried only once the port accepts TCP so pynetdicom does not log a refused connection per poll."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return False
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status and status.Status == 0)


@contextmanager
def fake_predictd(root: Path, ae_title: str = "PREDICTD") -> Iterator[tuple[int, Path]]:
    """dcmtk storescp accepting every transfer syntax, writing what it receives to ``root/received``.

    Yields ``(port, received_dir)``. ``+xa`` matters: with it Orthanc can forward the JPEG-LS file as-is, which is
    what the real predictd accepts too.
    """
    received = root / "received"
    received.mkdir(parents=True)
    port = free_port()
    log_path = root / "storescp.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["storescp", "-v", "-aet", ae_title, "+xa", "-od", str(received), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=NODELAY_ENV,
        )
    try:
        wait_until(lambda: proc.poll() is None and _echo(port, ae_title), timeout=30, what="storescp to answer")
        yield port, received
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def sr_for(image: pydicom.Dataset) -> pydicom.Dataset:
    """A small Comprehensive SR in the image's study, labelled like predictd's results."""
    finding = hd.sr.TextContentItem(
        name=hd.sr.CodedConcept("121071", "DCM", "Finding"),
        value="harness test: not a real result",
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    root = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report"), template_id=None
    )
    root.ContentSequence = hd.sr.ContentSequence([finding])
    return hd.sr.ComprehensiveSR(
        evidence=[image],
        content=root,
        series_instance_uid=generate_uid(),
        series_number=990,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="predictd",
        series_description="predictd pre-dictation",
    )


def c_store(ds: pydicom.Dataset, port: int, called_ae: str) -> None:
    """C-STORE one dataset from pynetdicom, the way predictd's sender talks to the PACS."""
    ae = AE(ae_title="PREDICTD")
    ae.add_requested_context(ComprehensiveSRStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, "Orthanc refused the association"
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status and status.Status == 0, f"C-STORE status {status}"


def test_stable_study_is_forwarded_once_and_the_sr_does_not_loop(tmp_path: Path) -> None:
    image = pydicom.dcmread(CR_JLSL, stop_before_pixels=True)
    with (
        fake_predictd(tmp_path / "predictd") as (predictd_port, received),
        OrthancServer(tmp_path / "orthanc", predictd=("PREDICTD", predictd_port), stable_age=1) as pacs,
    ):
        storescu(pacs.dicom_port, pacs.aet, [CR_JLSL])
        study_id = pacs.wait_study_id(image.StudyInstanceUID, timeout=10)
        (cr_id,) = pacs.find_instances("CR")

        # The forward: StableAge (1 s) of quiet, then the Lua script sends synchronously and marks the instance.
        wait_until(lambda: pacs.is_forwarded(cr_id), timeout=30, interval=0.2, what="ForwardedToPredictd on CR")
        assert pacs.forward_summaries(study_id) == ["sent 1, skipped 0"]
        (first,) = list(received.iterdir())
        forwarded = pydicom.dcmread(first, stop_before_pixels=True)
        assert forwarded.SOPInstanceUID == image.SOPInstanceUID
        assert forwarded.file_meta.TransferSyntaxUID == JPEGLSLossless, "Orthanc should forward JPEG-LS as-is"

        # predictd's answer arrives in the same study: the study becomes unstable, then stable again, and the
        # callback runs a second time. Waiting for IsStable and for that run's summary line in Orthanc's log (the
        # script prints it after any synchronous send would have completed) proves nothing more goes out, with no
        # fixed sleep.
        c_store(sr_for(image), pacs.dicom_port, pacs.aet)
        assert len(pacs.find_instances("SR")) == 1
        wait_until(lambda: pacs.is_stable(study_id), timeout=pacs.stable_age + 10, interval=0.2, what="stable again")
        wait_until(lambda: len(pacs.forward_summaries(study_id)) >= 2, timeout=10, what="second forward run")
        summaries = pacs.forward_summaries(study_id)
        log = pacs.log_text()

    assert summaries == ["sent 1, skipped 0", "sent 0, skipped 2"], log
    assert [p.name for p in received.iterdir()] == [first.name], "the SR or a re-sent image reached predictd"
