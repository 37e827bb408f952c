"""Incoming data sets stay on the spool's file system: renamed into place, deleted on abort, swept at start."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from tests.integration.receivers import CALLED, CALLING, Running
from tests.support import wait_until

CR = "1.2.840.10008.5.1.4.1.1.1"
PHI_NAME = "ZQXINCOMING^PATIENT"


def _cr(side: int) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = PHI_NAME
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((side, side), dtype=np.uint16).tobytes()
    return ds


def _associate(port: int) -> Any:
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    assert assoc.is_established
    return assoc


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp folder, watched: nothing received may land there."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_stored_instance_is_renamed_from_the_spools_tmp_folder(
    start_receiver: Callable[..., Running], system_tmp: Path
) -> None:
    rx = start_receiver()
    assoc = _associate(rx.port)
    try:
        status = assoc.send_c_store(_cr(256))
    finally:
        assoc.release()
    assert status.Status == 0x0000
    (stored,) = rx.spooled_files()
    assert pydicom.dcmread(stored).PatientName == PHI_NAME
    assert stored.stat().st_mode & 0o077 == 0  # mkstemp's 0600, kept by the rename
    assert _files(rx.spool.root / "tmp") == [] and _files(system_tmp) == []


def test_an_aborted_transfer_leaves_no_file_behind(start_receiver: Callable[..., Running], system_tmp: Path) -> None:
    rx = start_receiver(max_pdu_size=16384)
    assoc = _associate(rx.port)
    sock = assoc.dul.socket
    send = sock.send

    def slow_send(data: bytes) -> None:  # a slow modality link: 20 MB take seconds, so the cut lands mid-transfer
        time.sleep(0.005)
        send(data)

    sock.send = slow_send
    sender = threading.Thread(target=lambda: assoc.send_c_store(_cr(3200)), daemon=True)
    sender.start()
    (partial,) = wait_until(lambda: _files(rx.spool.root / "tmp"), timeout=30, what="a partial data set in spool/tmp")
    assert partial.stat().st_mode & 0o077 == 0
    sock.socket.shutdown(socket.SHUT_RDWR)  # the network goes away mid-image
    wait_until(lambda: not _files(rx.spool.root / "tmp"), timeout=15, what="the partial data set to be deleted")
    sender.join(timeout=30)
    assert rx.instances() == [] and _files(system_tmp) == []


def test_what_a_killed_receiver_left_is_swept_at_start(start_receiver: Callable[..., Running], tmp_path: Path) -> None:
    leftover = tmp_path / "spool0" / "tmp" / "incoming-killed.dcm"  # the first receiver's spool
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(PHI_NAME.encode())
    start_receiver()
    assert not leftover.exists()
