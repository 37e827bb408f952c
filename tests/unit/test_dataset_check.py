"""The receiver's data set check on real files (pydicom-data's WG04 images, the JPEG-LS CR), cut or edited the way
broken senders send them: each problem is the right kind (Unreadable → 0xC210, Unusable → 0xA900), no reason quotes
a patient value, and no check reads the pixel payload into memory."""

from __future__ import annotations

import io
import re
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.encaps import encapsulate, itemize_fragment
from pydicom.filereader import read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import split_dataset

from predictd.daemon.dataset_check import DatasetProblem, Header, Unreadable, Unusable, read_header
from predictd.reporting.uids import device_uid
from tests.support import CR_JLSL, new_copy, pydicom_data_file

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
ITEM = b"\xfe\xff\x00\xe0"
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
PATIENT = {"PatientName": "ZQXCHECK^PATIENT", "PatientID": "ZQX-ID-4711", "AccessionNumber": "ZQXACC9"}


def copy_of(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of a real file with new UIDs and a patient to leak, optionally with attributes changed or removed."""
    return new_copy(src, dst, **{**PATIENT, **changes})


def check(path: Path, *, sop_class: str | None = None, sop_instance: str | None = None) -> Header:
    """``read_header`` as the receiver calls it, with the request's UIDs taken from the file meta (a raw send)."""
    meta = read_file_meta_info(path)
    with open(path, "rb") as fh:
        return read_header(
            fh, sop_class or str(meta.MediaStorageSOPClassUID), sop_instance or str(meta.MediaStorageSOPInstanceUID)
        )


def problem(path: Path, kind: type[DatasetProblem], **kwargs: Any) -> str:
    with pytest.raises(kind) as caught:
        check(path, **kwargs)
    reason = caught.value.reason
    for value in PATIENT.values():  # no patient value in any reason (it is logged)
        assert value not in reason
    return reason


def pixels_at(path: Path) -> int:
    """Where (7FE0,0010) starts: where ``dcmread(stop_before_pixels=True)`` leaves the file."""
    with open(path, "rb") as fh:
        pydicom.dcmread(fh, stop_before_pixels=True)
        return fh.tell()


def cut(path: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(path.read_bytes()[:keep])
    return dst


def encapsulated_with(tmp_path: Path, items: bytes) -> Path:
    """The real JPEG-LS CR's header, then (7FE0,0010) OB of undefined length holding ``items`` as given."""
    src = copy_of(CR_JLSL, tmp_path / "src.dcm")
    start = pixels_at(src)
    path = tmp_path / "items.dcm"
    path.write_bytes(src.read_bytes()[: start + 12] + items)
    return path


# --- accepted ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "RG1_UNCR.dcm",  # explicit VR little endian, 7 MB
        "RG1_UNCI.dcm",  # implicit VR little endian
        "RG1_J2KR.dcm",  # JPEG 2000, one fragment
        "OBXXXX1A_expb.dcm",  # explicit VR big endian
        "color3d_jpeg_baseline.dcm",  # JPEG baseline, a fragment per frame
        "emri_small_RLE.dcm",  # RLE, multi-frame
    ],
)
def test_real_files_pass(name: str) -> None:
    path = pydicom_data_file(name)
    header = check(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (header.study_uid, header.series_uid, header.sop_instance_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    assert header.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert not header.made_by_predictd


def test_the_jpegls_cr_passes_with_its_registry_values(tmp_path: Path) -> None:
    path = copy_of(CR_JLSL, tmp_path / "cr.dcm", StudyDate="20261101")
    header = check(path)
    assert header.transfer_syntax_uid == JPEG_LS_LOSSLESS and header.modality == "CR"
    assert (header.patient_id, header.accession_number, header.study_date) == ("ZQX-ID-4711", "ZQXACC9", "20261101")


def test_an_in_memory_data_set_passes() -> None:
    """Chunked receive off: pynetdicom hands the data set over as bytes (an ``io.BytesIO`` here)."""
    data = CR_JLSL.read_bytes()
    meta = read_file_meta_info(CR_JLSL)
    header = read_header(io.BytesIO(data), str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID))
    assert header.sop_instance_uid == meta.MediaStorageSOPInstanceUID


def test_predictds_own_key_image_is_recognised(tmp_path: Path) -> None:
    equipment = pydicom.Dataset()
    equipment.DeviceUID = device_uid()
    ours = copy_of(
        pydicom_data_file("RG1_UNCR.dcm"),
        tmp_path / "ours.dcm",
        SOPClassUID=SECONDARY_CAPTURE,
        ContributingEquipmentSequence=pydicom.Sequence([equipment]),
    )
    assert check(ours).made_by_predictd


def test_the_check_never_reads_the_pixel_payload() -> None:
    """Peak memory of the check stays far below the pixel data (7 MB native, 4 MB JPEG 2000, 6 MB multi-frame)."""
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "color3d_jpeg_baseline.dcm"):
        path = pydicom_data_file(name)
        check(path)  # imports and caches warm
        tracemalloc.start()
        try:
            check(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, (name, peak)


# --- deflated: pydicom's inflated buffer takes the same path -------------------------------------------------------


def deflated(tmp_path: Path, **changes: Any) -> Path:
    path = copy_of(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "plain.dcm", **changes)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = tmp_path / "deflated.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_a_deflated_data_set_passes(tmp_path: Path) -> None:
    assert check(deflated(tmp_path)).transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def test_a_deflated_data_set_without_pixel_data_is_unusable(tmp_path: Path) -> None:
    assert problem(deflated(tmp_path, PixelData=None), Unusable) == "no pixel data"


def test_a_deflated_data_set_cut_short_is_unreadable(tmp_path: Path) -> None:
    path = deflated(tmp_path)
    _meta, offset = split_dataset(path)
    data = path.read_bytes()
    cut(path, tmp_path / "cut.dcm", offset + (len(data) - offset) // 2)  # the deflate stream itself ends early
    assert problem(tmp_path / "cut.dcm", Unreadable).startswith("data set cannot be parsed")


def test_a_deflated_data_set_whose_pixel_data_runs_past_the_end_is_unreadable(tmp_path: Path) -> None:
    """A complete deflate stream of a truncated data set: found in the inflated buffer, as for any other syntax."""
    path = deflated(tmp_path)
    _meta, offset = split_dataset(path)
    data = path.read_bytes()
    inflated = zlib.decompress(data[offset:], -zlib.MAX_WBITS)
    squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    recompressed = squeeze.compress(inflated[: len(inflated) - 1000]) + squeeze.flush()
    (tmp_path / "short.dcm").write_bytes(data[:offset] + recompressed)
    assert re.fullmatch(r"pixel data truncated \(\d+ of \d+ bytes\)", problem(tmp_path / "short.dcm", Unreadable))


# --- Unreadable (0xC210): cannot be parsed, or truncated -----------------------------------------------------------


def test_garbage_after_the_file_meta_is_unreadable_and_the_reason_names_only_type_and_offset(tmp_path: Path) -> None:
    _meta, offset = split_dataset(CR_JLSL)
    junk = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\x01\x02\x03\x04" * 10
    bad = tmp_path / "junk.dcm"
    bad.write_bytes(CR_JLSL.read_bytes()[:offset] + junk)
    reason = problem(bad, Unreadable)
    assert re.fullmatch(r"data set cannot be parsed \(\w+ near byte \d+\)", reason), reason


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_UNCI.dcm", "OBXXXX1A_expb.dcm"])
def test_native_pixel_data_cut_short_is_unreadable(tmp_path: Path, name: str) -> None:
    src = copy_of(pydicom_data_file(name), tmp_path / "src.dcm")
    half = cut(src, tmp_path / "half.dcm", pixels_at(src) + (src.stat().st_size - pixels_at(src)) // 2)
    assert re.fullmatch(r"pixel data truncated \(\d+ of \d+ bytes\)", problem(half, Unreadable))


def test_encapsulated_pixel_data_cut_in_a_fragment_is_unreadable(tmp_path: Path) -> None:
    src = copy_of(CR_JLSL, tmp_path / "src.dcm")
    half = cut(src, tmp_path / "half.dcm", src.stat().st_size // 2)
    assert problem(half, Unreadable) == "pixel data truncated (no sequence delimiter)"


def test_a_missing_sequence_delimiter_is_unreadable(tmp_path: Path) -> None:
    src = copy_of(CR_JLSL, tmp_path / "src.dcm")
    assert src.read_bytes().endswith(SEQUENCE_DELIMITER)
    assert "truncated" in problem(cut(src, tmp_path / "a.dcm", src.stat().st_size - 8), Unreadable)
    assert "truncated" in problem(cut(src, tmp_path / "b.dcm", src.stat().st_size - 4), Unreadable)  # no length


def test_the_pixel_data_element_header_cut_short(tmp_path: Path) -> None:
    src = copy_of(CR_JLSL, tmp_path / "src.dcm")
    at = pixels_at(src)
    # inside the 4-byte length of (7FE0,0010) OB: the header parse itself runs out (0xC210)
    assert problem(cut(src, tmp_path / "a.dcm", at + 10), Unreadable).startswith("data set cannot be parsed")
    # fewer bytes than an element header: no element pydicom can read, so no Pixel Data (0xA900, as before)
    assert problem(cut(src, tmp_path / "b.dcm", at + 4), Unusable) == "no pixel data"


def test_a_delimiter_found_inside_a_cut_fragment_is_still_truncation(tmp_path: Path) -> None:
    """pydicom falls back to scanning for the delimiter's bytes when the item walk runs off the end; a match inside
    the fragment must not pass the cut data set as complete (the hand-written last-fragment check)."""
    payload = b"\x00\x11" * 1000 + SEQUENCE_DELIMITER + b"\x22\x33" * 1000
    src = copy_of(CR_JLSL, tmp_path / "src.dcm", PixelData=encapsulate([payload]))
    short = cut(src, tmp_path / "short.dcm", src.stat().st_size - 8 - 1000)  # after the false delimiter
    assert problem(short, Unreadable) == "pixel data truncated (fragment runs past the end)"


@pytest.mark.parametrize(
    "stray",
    [
        b"\x08\x00\x05\x00\x04\x00\x00\x00ABCD",  # a data element among the items
        ITEM + b"\xff\xff\xff\xff" + b"\x01\x02" * 8,  # an item of undefined length
    ],
)
def test_malformed_encapsulated_items_are_unreadable(tmp_path: Path, stray: bytes) -> None:
    path = encapsulated_with(tmp_path, itemize_fragment(b"") + stray + SEQUENCE_DELIMITER)
    assert problem(path, Unreadable).startswith("malformed encapsulated pixel data (ValueError: ")


# --- Unusable (0xA900): a required UID or the Pixel Data missing or unusable ---------------------------------------


def test_no_pixel_data_is_unusable(tmp_path: Path) -> None:
    nopix = copy_of(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "nopix.dcm", PixelData=None)
    assert problem(nopix, Unusable) == "no pixel data"


def test_an_empty_pixel_data_value_is_unusable(tmp_path: Path) -> None:
    empty = copy_of(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "empty.dcm", PixelData=b"")
    assert problem(empty, Unusable) == "no pixel data (empty value)"


@pytest.mark.parametrize(
    "items",
    [
        itemize_fragment(b"") + SEQUENCE_DELIMITER,  # a basic offset table, no fragment
        SEQUENCE_DELIMITER,  # not even the basic offset table
    ],
)
def test_encapsulated_pixel_data_without_fragments_is_unusable(tmp_path: Path, items: bytes) -> None:
    assert problem(encapsulated_with(tmp_path, items), Unusable) == "no pixel data (no fragments)"


def test_the_same_with_pydicoms_writer(tmp_path: Path) -> None:
    empty = copy_of(CR_JLSL, tmp_path / "empty.dcm", PixelData=encapsulate([]))
    assert problem(empty, Unusable) == "no pixel data (no fragments)"


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_a_missing_uid_is_unusable(tmp_path: Path, keyword: str) -> None:
    path = copy_of(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "nouid.dcm")
    ds = pydicom.dcmread(path)
    delattr(ds, keyword)
    ds.save_as(path)
    assert problem(path, Unusable) == f"required attribute missing: {keyword}"


def test_uids_differing_from_the_request_are_unusable(tmp_path: Path) -> None:
    path = copy_of(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "odd.dcm")
    assert problem(path, Unusable, sop_instance=generate_uid()) == (
        "SOPInstanceUID differs from the request's AffectedSOPInstanceUID"
    )
    assert problem(path, Unusable, sop_class=SECONDARY_CAPTURE) == (
        "SOPClassUID differs from the request's AffectedSOPClassUID"
    )


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_uid_that_is_not_a_file_name_is_unusable(tmp_path: Path) -> None:
    path = copy_of(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "evil.dcm", StudyInstanceUID="../../escape")
    assert problem(path, Unusable)
