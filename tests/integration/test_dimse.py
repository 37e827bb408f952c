"""daemon.destinations.dicom against real peers: dcmtk storescp, predictd's own receiver, a port nobody listens on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from predictd.daemon.config import ReceiveSettings
from predictd.daemon.config_send import DicomDestination
from predictd.daemon.destinations import SendError
from predictd.daemon.destinations.dicom import echo, store_file
from predictd.daemon.listeners import Receiver
from predictd.daemon.spool import Spool
from tests.support import CR_JLSL, free_port, pydicom_data_file, wait_until
from tests.support import storescp as running_storescp

PEER_AE = "PEER"
OUR_AE = "PREDICTD"


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp on a free port, accepting every transfer syntax, writing into a temp folder."""
    out = tmp_path / "peer"
    with running_storescp(out, PEER_AE, "+xa") as port:
        yield port, out


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    """predictd's receiver, allowing only OUR_AE as caller; records nothing (the queue is tested elsewhere)."""
    settings = ReceiveSettings(ae_title="RECEIVER", port=free_port(), allowed_calling_aets=[OUR_AE], min_free_bytes=0)
    rx = Receiver(settings, Spool(tmp_path / "spool"), record=lambda inst: True)
    rx.start()
    try:
        yield rx
    finally:
        rx.stop()


def dest(port: int, ae_title: str = PEER_AE, timeout: float = 10) -> DicomDestination:
    return DicomDestination(name="pacs", ae_title=ae_title, host="127.0.0.1", port=port, timeout_seconds=timeout)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "jpeg-ls hip"])
def test_store_file_reaches_storescp(storescp: tuple[int, Path], name: str) -> None:
    port, out = storescp
    src = CR_JLSL if name == "jpeg-ls hip" else pydicom_data_file(name)
    store_file(src, dest(port), OUR_AE)
    (received,) = wait_until(lambda: list(out.iterdir()), timeout=10, what="file in storescp folder")
    got, sent = pydicom.dcmread(received), pydicom.dcmread(src)
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID  # sent as-is, not transcoded
    assert bytes(got.PixelData) == bytes(sent.PixelData)


def test_store_file_to_a_closed_port_is_retryable() -> None:
    with pytest.raises(SendError) as info:
        store_file(pydicom_data_file("RG1_UNCR.dcm"), dest(free_port(), timeout=5), OUR_AE)
    assert info.value.retryable
    assert "cannot connect" in str(info.value)


def test_store_file_rejected_association_is_not_retryable(receiver: Receiver) -> None:
    with pytest.raises(SendError) as info:
        store_file(pydicom_data_file("RG1_UNCR.dcm"), dest(receiver.port, "RECEIVER"), "STRANGER")
    assert not info.value.retryable
    assert "rejected" in str(info.value)


def test_store_file_to_predictd_receiver(receiver: Receiver) -> None:
    src = pydicom_data_file("RG1_J2KR.dcm")
    store_file(src, dest(receiver.port, "RECEIVER"), OUR_AE)
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    assert receiver.spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID).is_file()


def test_store_file_failure_status_raises(tmp_path: Path) -> None:
    settings = ReceiveSettings(ae_title="FULL", port=free_port(), min_free_bytes=2**62)
    rx = Receiver(settings, Spool(tmp_path / "spool"), record=lambda inst: True)
    rx.start()
    try:
        with pytest.raises(SendError) as info:
            store_file(pydicom_data_file("RG1_UNCR.dcm"), dest(rx.port, "FULL"), OUR_AE)
    finally:
        rx.stop()
    assert "0xA700" in str(info.value)
    assert info.value.retryable  # out of resources may pass later


def test_echo_the_receiver(receiver: Receiver) -> None:
    assert echo("127.0.0.1", receiver.port, "RECEIVER", calling_ae=OUR_AE) == 0x0000


def test_echo_nobody_raises() -> None:
    with pytest.raises(SendError) as info:
        echo("127.0.0.1", free_port(), "NOBODY", timeout=5)
    assert info.value.retryable
