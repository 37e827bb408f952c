"""The receiver over real sockets (dcmtk storescu and pynetdicom SCUs) into a real spool and a real SQLite queue."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from structlog.testing import capture_logs

from predictd.daemon.config import ReceiveSettings
from predictd.daemon.listeners import Receiver
from predictd.daemon.receive import accepted_transfer_syntaxes
from predictd.daemon.spool import Spool
from predictd.reporting.uids import device_uid
from tests.integration.receive_helpers import (
    COMPREHENSIVE_SR,
    CT_IMAGE_STORAGE,
    GRAYSCALE_PR,
    JPEG_LS_LOSSLESS,
    SECONDARY_CAPTURE,
    c_store,
    pixel_data,
    storescu,
)
from tests.integration.receivers import CALLED, CALLING, Running
from tests.support import CR_JLSL, free_port, new_copy, pydicom_data_file


def test_storescu_jpegls_is_stored_durably_and_recorded(start_receiver: Callable[..., Running]) -> None:
    rx = start_receiver()
    with capture_logs() as logs:
        done = storescu(rx.port, CR_JLSL, "-xt")
    assert done.returncode == 0, done.stderr

    src = pydicom.dcmread(CR_JLSL, stop_before_pixels=True)
    (row,) = rx.instances()
    path = Path(row.path)
    assert path == rx.spool.instance_path(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)
    assert row.sop_instance_uid == src.SOPInstanceUID
    assert row.transfer_syntax_uid == JPEG_LS_LOSSLESS
    assert row.calling_ae == CALLING and row.modality == "CR"
    assert row.size_bytes == path.stat().st_size
    stored = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS  # a real Part 10 file, sent as-is
    assert bytes(stored.PixelData) == pixel_data(CR_JLSL)
    study = rx.study(src.StudyInstanceUID)
    assert study is not None and study.state == "receiving"
    assert [e["event"] for e in logs if e["event"] == "instance_stored"] == ["instance_stored"]
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_pynetdicom_scu_uncompressed_and_jpeg2000(start_receiver: Callable[..., Running]) -> None:
    rx = start_receiver()
    files = [pydicom_data_file("RG1_UNCR.dcm"), pydicom_data_file("RG1_J2KR.dcm")]
    assert c_store(rx.port, [pydicom.dcmread(f) for f in files]) == [0x0000, 0x0000]

    rows = {row.sop_instance_uid: row for row in rx.instances()}
    for f in files:
        src = pydicom.dcmread(f)
        row = rows[src.SOPInstanceUID]
        assert row.transfer_syntax_uid == src.file_meta.TransferSyntaxUID
        assert pixel_data(Path(row.path)) == bytes(src.PixelData)
    assert len({row.study_id for row in rows.values()}) == 1  # same study, one row in studies


def test_same_instance_twice_is_one_row_and_two_successes(start_receiver: Callable[..., Running]) -> None:
    rx = start_receiver()
    ds = pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm"))
    with capture_logs() as logs:
        assert c_store(rx.port, [ds]) == [0x0000]
        assert c_store(rx.port, [ds]) == [0x0000]
    assert len(rx.instances()) == 1
    assert len(rx.spooled_files()) == 1
    assert [e["event"] for e in logs if e["event"].startswith("instance_")] == ["instance_stored", "instance_duplicate"]


def test_undecodable_compressed_pixels_are_accepted(start_receiver: Callable[..., Running], tmp_path: Path) -> None:
    """Decoding is the classify stage's job: well-formed but garbage JPEG-LS fragments are stored as sent."""
    rx = start_receiver()
    bad = new_copy(CR_JLSL, tmp_path / "bad.dcm", PixelData=encapsulate([b"\x01\x02not JPEG-LS" * 64]))
    assert c_store(rx.port, [bad], raw=True) == [0x0000]
    (row,) = rx.instances()
    assert row.sop_instance_uid == pydicom.dcmread(bad).SOPInstanceUID
    assert Path(row.path).read_bytes().endswith(bad.read_bytes()[-256:])


def test_ignore_mode_answers_success_and_stores_nothing(start_receiver: Callable[..., Running], tmp_path: Path) -> None:
    rx = start_receiver(unsupported_sop_classes="ignore")
    ct = new_copy(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "ct.dcm", SOPClassUID=CT_IMAGE_STORAGE, Modality="CT")
    with capture_logs() as logs:
        assert c_store(rx.port, [ct]) == [0x0000]
    assert rx.instances() == [] and rx.spooled_files() == []
    assert any(e["event"] == "instance_ignored" for e in logs)


def test_registry_attributes_land_on_the_study_row(start_receiver: Callable[..., Running], tmp_path: Path) -> None:
    rx = start_receiver()
    src = new_copy(
        pydicom_data_file("RG1_UNCR.dcm"),
        tmp_path / "a.dcm",
        PatientID="PAT-0042",
        AccessionNumber="ACC7",
        StudyDate="20261101",
    )
    with capture_logs() as logs:
        assert c_store(rx.port, [src]) == [0x0000]
    study = rx.study(pydicom.dcmread(src).StudyInstanceUID)
    assert study is not None
    assert (study.patient_id, study.accession_number, study.study_date) == ("PAT-0042", "ACC7", "20261101")
    assert "PAT-0042" not in repr(logs)  # kept for the registry, never logged


def test_our_own_key_image_sent_back_is_acknowledged_and_dropped(
    start_receiver: Callable[..., Running], tmp_path: Path
) -> None:
    """A PACS forwarding the whole study sends predictd's Secondary Captures back: they must not be classified."""
    rx = start_receiver()
    equipment = pydicom.Dataset()
    equipment.DeviceUID = device_uid()
    equipment.Manufacturer = "predictd"
    ours = new_copy(
        pydicom_data_file("RG1_UNCR.dcm"),
        tmp_path / "sc.dcm",
        SOPClassUID=SECONDARY_CAPTURE,
        ContributingEquipmentSequence=pydicom.Sequence([equipment]),
    )
    theirs = new_copy(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "sc2.dcm", SOPClassUID=SECONDARY_CAPTURE)
    with capture_logs() as logs:
        assert c_store(rx.port, [ours, theirs]) == [0x0000, 0x0000]
    assert [row.sop_instance_uid for row in rx.instances()] == [pydicom.dcmread(theirs).SOPInstanceUID]
    assert any(e["event"] == "instance_ignored" and "own output" in e["reason"] for e in logs)


def test_reports_and_presentation_states_are_acknowledged_and_dropped_even_when_refusing(
    start_receiver: Callable[..., Running],
) -> None:
    """A PACS forwarding a whole study sends its SRs (ours too) and PRs along: success, never stored or classified."""
    rx = start_receiver()  # unsupported_sop_classes = "refuse"
    documents = [_bare(COMPREHENSIVE_SR, "SR"), _bare(GRAYSCALE_PR, "PR")]
    with capture_logs() as logs:
        assert c_store(rx.port, documents) == [0x0000, 0x0000]
    assert rx.instances() == [] and rx.spooled_files() == []
    assert sum(e["event"] == "instance_ignored" for e in logs) == 2


def _bare(sop_class: str, modality: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), modality
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


# --- refused -----------------------------------------------------------------------------------------------------


def test_refuse_mode_refuses_other_sop_classes_at_negotiation(start_receiver: Callable[..., Running]) -> None:
    rx = start_receiver()  # unsupported_sop_classes = "refuse" is the default
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(CT_IMAGE_STORAGE)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1")  # CR, so the association itself is accepted
    assoc = ae.associate("127.0.0.1", rx.port, ae_title=CALLED)
    try:
        assert assoc.is_established
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
    finally:
        assoc.release()
    assert CT_IMAGE_STORAGE in rejected and CT_IMAGE_STORAGE not in accepted
    assert "1.2.840.10008.5.1.4.1.1.1" in accepted


def test_truncated_dataset_fails_and_the_server_keeps_serving(
    start_receiver: Callable[..., Running], tmp_path: Path
) -> None:
    rx = start_receiver()
    whole = CR_JLSL.read_bytes()
    half = tmp_path / "half.dcm"
    half.write_bytes(whole[: len(whole) // 2])  # header intact, pixel data cut in the middle
    comments: list[str | None] = []
    with capture_logs() as logs:
        statuses = c_store(rx.port, [half, pydicom_data_file("RG1_UNCR.dcm")], raw=True, comments=comments)
    assert statuses[0] == 0xC210
    assert comments == ["predictd: the data set cannot be parsed or is truncated", None]
    assert statuses[1] == 0x0000  # same association, next instance fine
    assert [row.sop_instance_uid for row in rx.instances()] == [
        pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm")).SOPInstanceUID
    ]
    (rejected,) = [e for e in logs if e["event"] == "instance_rejected"]
    assert "truncated" in rejected["reason"]


def test_unparseable_dataset_fails(start_receiver: Callable[..., Running], tmp_path: Path) -> None:
    rx = start_receiver()
    _meta, offset = split_dataset(CR_JLSL)
    # The real preamble and file meta, then a sequence of undefined length whose first item header is garbage.
    junk = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\x01\x02\x03\x04" * 10
    bad = tmp_path / "junk.dcm"
    bad.write_bytes(CR_JLSL.read_bytes()[:offset] + junk)
    with capture_logs() as logs:
        assert c_store(rx.port, [bad], raw=True) == [0xC210]
    assert rx.instances() == [] and rx.spooled_files() == []
    (rejected,) = [e for e in logs if e["event"] == "instance_rejected"]
    # the parser's own message may quote element values: the reason names the error type and where, nothing else
    assert re.fullmatch(r"data set cannot be parsed \(\w+ near byte \d+\)", rejected["reason"]), rejected["reason"]


def test_image_without_pixel_data_is_refused(start_receiver: Callable[..., Running], tmp_path: Path) -> None:
    rx = start_receiver()
    nopix = new_copy(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "nopix.dcm", PixelData=None)
    comments: list[str | None] = []
    with capture_logs() as logs:
        assert c_store(rx.port, [nopix], comments=comments) == [0xA900]
    assert comments == ["predictd: a required UID or Pixel Data is missing or unusable"]
    assert rx.instances() == [] and rx.spooled_files() == []
    assert any(e["event"] == "instance_rejected" and e["reason"] == "no pixel data" for e in logs)


def test_sop_instance_uid_differing_from_the_request_is_refused(
    start_receiver: Callable[..., Running], tmp_path: Path
) -> None:
    rx = start_receiver()
    path = new_copy(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "odd.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # a raw send announces this UID in the request
    ds.save_as(path)  # as is: enforce_file_format would copy the dataset's UID back into the file meta
    assert c_store(rx.port, [path], raw=True) == [0xA900]
    assert rx.instances() == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_uid_that_is_not_a_file_name_is_refused(start_receiver: Callable[..., Running], tmp_path: Path) -> None:
    rx = start_receiver()
    ds = pydicom.dcmread(new_copy(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "evil.dcm"))
    ds.StudyInstanceUID = "../../escape"
    assert c_store(rx.port, [ds]) == [0xA900]
    assert rx.instances() == [] and not (tmp_path / "escape").exists()


def test_full_spool_answers_out_of_resources(start_receiver: Callable[..., Running]) -> None:
    rx = start_receiver(min_free_bytes=2**62)
    comments: list[str | None] = []
    with capture_logs() as logs:
        assert c_store(rx.port, [pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm"))], comments=comments) == [0xA700]
    assert comments == ["predictd: spool below its free-space watermark"]
    assert rx.instances() == [] and rx.spooled_files() == []
    assert any(e["event"] == "instance_rejected" and "min_free_bytes" in e["reason"] for e in logs)


def test_unexpected_error_answers_a_processing_failure_and_the_server_keeps_serving(tmp_path: Path) -> None:
    calls: list[str] = []

    def flaky_record(inst: Any) -> bool:
        calls.append(inst.sop_instance_uid)
        if len(calls) == 1:
            raise RuntimeError("database is down")
        return True

    settings = ReceiveSettings(ae_title=CALLED, port=free_port(), min_free_bytes=0)
    receiver = Receiver(settings, Spool(tmp_path / "spool"), record=flaky_record)
    receiver.start()
    try:
        ds = pydicom.dcmread(pydicom_data_file("RG1_UNCR.dcm"))
        comments: list[str | None] = []
        assert c_store(receiver.port, [ds, ds], comments=comments) == [0x0110, 0x0000]
        assert comments == ["predictd: unexpected error, see its log", None]  # the exception's text stays in the log
    finally:
        receiver.stop()


def test_accepts_every_syntax_pydicom_decodes() -> None:
    syntaxes = set(accepted_transfer_syntaxes())
    for uid in (
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.2",  # explicit VR big endian
        "1.2.840.10008.1.2.1.99",  # deflated
        "1.2.840.10008.1.2.5",  # RLE
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.57",  # JPEG lossless
        "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
    ):
        assert uid in syntaxes


def test_parallel_associations_store_one_study(start_receiver: Callable[..., Running], tmp_path: Path) -> None:
    """Several senders at once (one series each) into one study: every instance recorded, one study row."""
    rx = start_receiver()
    study_uid = generate_uid()
    files = [
        new_copy(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / f"p{i}.dcm", StudyInstanceUID=study_uid)
        for i in range(4)
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda f: c_store(rx.port, [f]), files))
    assert statuses == [[0x0000]] * 4
    rows = rx.instances()
    assert len(rows) == 4 and len({r.study_id for r in rows}) == 1


def test_received_study_is_purged_from_the_spool(start_receiver: Callable[..., Running]) -> None:
    rx = start_receiver()
    assert storescu(rx.port, CR_JLSL, "-xt").returncode == 0
    study_uid = pydicom.dcmread(CR_JLSL, stop_before_pixels=True).StudyInstanceUID
    (row,) = rx.instances()
    assert rx.spool.purge(study_uid, [Path(row.path)], [1]) == 1
    assert rx.spooled_files() == []
    assert rx.spool.purge(study_uid, [Path(row.path)], [1]) == 0  # a retried purge is harmless


def test_in_memory_receive_works_too(start_receiver: Callable[..., Running], monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler copes with pynetdicom's chunked receive switched off (encoded_dataset instead of a temp file)."""
    rx = start_receiver()
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    src = pydicom.dcmread(pydicom_data_file("RG1_J2KR.dcm"))
    assert c_store(rx.port, [src]) == [0x0000]
    (row,) = rx.instances()
    assert pixel_data(Path(row.path)) == bytes(src.PixelData)


# --- association limits ------------------------------------------------------------------------------------------
