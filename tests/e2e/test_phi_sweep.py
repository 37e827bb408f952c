"""No PHI outside the places meant to hold it: `predictd serve` fed images whose every patient-level attribute holds
a distinctive string (an invalid birth date and an over-long LO among them), a corrupt data set, undecodable pixels
and an aborted transfer; then every log line, every CLI answer and every file outside spool, outbox and database is
searched for those strings."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset

from tests.e2e.predictd_proc import PredictdServer
from tests.integration.pipeline_helpers import copy_as_new_study
from tests.support import CR_JLSL, wait_until

pytestmark = pytest.mark.e2e

MARK = "ZQX"
PHI = {
    "PatientName": "ZQXNAME^PHI",
    "PatientID": "ZQXPID77",
    "IssuerOfPatientID": "ZQXISSUER",
    "PatientBirthDate": "ZQXDOB1923",  # not a valid DA: highdicom refuses to copy it
    "OtherPatientIDs": "ZQXOTHERID",
    "OtherPatientNames": "ZQXOTHER^NAME",
    "PatientAddress": "ZQXADDR 1 Main Street",
    "PatientTelephoneNumbers": "ZQXTEL555",
    "PatientMotherBirthName": "ZQXMOTHER^NAME",
    "PatientComments": "ZQXCOMMENT",
    "AccessionNumber": "ZQXACC55",
    "ReferringPhysicianName": "ZQXREF^DOCTOR",
    "StudyID": "ZQXSTUDY",
    "InstitutionName": "ZQXINST" + "x" * 70,  # LO is at most 64 characters
}
"""Files meant to hold patient data: the received images, the documents sent back, the database."""
HOLDS_PHI = ("var/spool/instances", "var/spool/documents", "outbox", "var/predictd.db")


def _with_phi(path: Path, *, garbage_pixels: bool = False) -> Path:
    copy_as_new_study(CR_JLSL, path, garbage_pixels=garbage_pixels)
    ds = pydicom.dcmread(path)
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def _unparseable(path: Path) -> Path:
    """The PHI-laden header, then garbage where the next element should be: the parser quotes what it read."""
    good = _with_phi(path)
    _meta, offset = split_dataset(good)
    head = good.read_bytes()
    ds_bytes = head[offset:]
    cut = ds_bytes.index(b"ZQXNAME") + len(PHI["PatientName"]) + 1  # after the name, on an element boundary
    junk = b"\x10\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"ZQXDOB" * 8  # a sequence whose item is garbage
    path.write_bytes(head[:offset] + ds_bytes[:cut] + junk)
    return path


def _raw_store(port: int, called: str, path: Path, abort_midway: bool = False) -> int | None:
    """Send a file's bytes as they are (pynetdicom's chunked send); ``abort_midway`` cuts the connection instead."""
    meta = read_file_meta_info(path)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title=called, max_pdu=4096)
    assert assoc.is_established
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        if not abort_midway:
            rsp = assoc.send_c_store(path)
            assoc.release()
            return int(rsp.Status)
        sock = assoc.dul.socket
        send = sock.send
        sent = threading.Event()

        def slow_send(data: bytes) -> None:
            time.sleep(0.01)
            send(data)
            sent.set()

        sock.send = slow_send
        threading.Thread(target=lambda: assoc.send_c_store(path), daemon=True).start()
        assert sent.wait(30)
        time.sleep(0.2)  # a few PDUs of the data set are in: then the network goes
        sock.socket.shutdown(socket.SHUT_RDWR)
        return None
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def _stray_files(root: Path) -> list[Path]:
    keep = tuple(root / p for p in HOLDS_PHI)
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(p == k or k in p.parents or p.name.startswith(k.name) for k in keep)
    ]


def test_phi_reaches_no_log_line_no_cli_answer_and_no_stray_file(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    good = _with_phi(images / "good.dcm")
    garbage = _with_phi(images / "garbage.dcm", garbage_pixels=True)
    unparseable = _unparseable(images / "unparseable.dcm")
    big = _with_phi(images / "big.dcm")
    big_ds = pydicom.dcmread(big)
    big_ds.StudyInstanceUID, big_ds.SOPInstanceUID = generate_uid(), generate_uid()
    big_ds.file_meta.MediaStorageSOPInstanceUID = big_ds.SOPInstanceUID
    big_ds.save_as(big)
    studies = {p.name: pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in (good, garbage)}

    root, system_tmp, cwd = tmp_path / "predictd", tmp_path / "system-tmp", tmp_path / "cwd"
    system_tmp.mkdir()
    cwd.mkdir()
    with PredictdServer(root, env={"TMPDIR": str(system_tmp)}, cwd=cwd) as server:
        for path in (good, garbage):
            server.storescu(path)
        assert _raw_store(server.port, server.ae_title, unparseable) == 0xC210
        _raw_store(server.port, server.ae_title, big, abort_midway=True)
        wait_until(lambda: server.study_state(studies["good.dcm"]) == "done", timeout=120, interval=0.5, what="done")
        wait_until(lambda: server.study_state(studies["garbage.dcm"]) == "failed", timeout=120, interval=0.5)
        wait_until(lambda: not list((root / "var/spool/tmp").glob("*")), timeout=30, what="the partial file gone")
        answers = [server.cli("queue", "ls", "--json").stdout]
        answers += [server.cli("queue", "show", uid, "--json").stdout for uid in studies.values()]
        answers += [server.cli("audit", "ls", "--json").stdout, server.cli("audit", "ls").stdout]
        logs = server.log_text()

    assert (root / "outbox" / studies["good.dcm"]).is_dir()  # the invalid date and the long LO cost no SR
    failed = json.loads(answers[2])
    assert "pixel data cannot be decoded" in json.dumps(failed)
    lines = logs.strip().splitlines()
    assert lines and all(json.loads(line) for line in lines)  # every line JSON, the libraries' included
    assert '"event": "instance_rejected"' in logs  # the unparseable one was seen ...
    assert MARK not in logs  # ... and no log line quotes a value
    assert not [a for a in answers if MARK in a], answers
    audited = {r["kind"] for r in json.loads(answers[-2])}
    assert {"association", "instance_received", "document_sent"} <= audited  # the trail saw them, without values
    stray = {str(p.relative_to(root)) for p in _stray_files(root) if MARK.encode() in p.read_bytes()}
    assert not stray, stray
    assert not [p for p in system_tmp.rglob("*") if p.is_file()] and not list(cwd.rglob("*"))
