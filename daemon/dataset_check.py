"""The receiver's check of a received data set: is it parseable, which instance is it, is its Pixel Data complete.

Cheap whatever the image size: pixel data is located and measured, never read into memory or decoded (15 MB images
arrive on many associations at once). pydicom does the reading:

- the header (everything before the pixel data) is ``pydicom.dcmread(stop_before_pixels=True, defer_size=...)``,
  which leaves the stream at the pixel data element, or at its end when there is none. For a deflated data set that
  stream is pydicom's inflated buffer (``FileDataset.buffer``), so every transfer syntax takes the same path;
- the pixel data element itself is ``pydicom.filereader.data_element_generator(defer_size=0)``: its tag, VR and
  length in any transfer syntax, a defined-length value skipped by a seek, an encapsulated value walked item by item
  to its sequence delimiter (``EOFError`` when there is none) without keeping a byte of it;
- the items of encapsulated pixel data are counted by ``pydicom.encaps.parse_fragments`` (seeks only; it raises on a
  malformed item).

What stays hand-written, because pydicom lacks it:

- **A value that runs past the end.** pydicom's reader checks no length against the data: a deferred value is
  skipped by a seek past the end, a read one is silently short (``dcmread`` even turns a missing delimiter into a
  warning). So a defined length is compared with the bytes that remain, and the last fragment's end with where pydicom
  found the sequence delimiter: ``parse_fragments`` stops without a word where the data ends, and when its item walk
  fails pydicom falls back to scanning for the delimiter's four bytes, which may match inside a cut fragment.
- **Reasons without values.** pydicom's messages may quote element values (PHI): a parse failure is reported as the
  exception type and the byte offset; other messages go through :func:`predictd.models.phi.exception_text`.
- **What predictd requires**: the three UIDs present and usable as file names, the data set's SOP Class/Instance
  UIDs equal to the C-STORE request's, and whether predictd made the instance itself (its device UID).

The problems found are of two kinds, which the receiver answers with two C-STORE statuses (its module docstring):
:class:`Unreadable` (cannot be parsed, or truncated: 0xC210) and :class:`Unusable` (a required UID or the Pixel Data
is missing or unusable: 0xA900).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO, cast

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.encaps import parse_fragments
from pydicom.filereader import data_element_generator
from pydicom.tag import Tag
from pydicom.uid import UID

from predictd.daemon.spool import check_uid
from predictd.models.phi import exception_text
from predictd.reporting.uids import device_uid

PIXEL_TAGS = frozenset(Tag(kw) for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
UNDEFINED_LENGTH = 0xFFFFFFFF

HEADER_DEFER_BYTES = 4096
"""Header values longer than this (overlay data, private blobs) are skipped, not read: none of the attributes read
here is that long, and pydicom reads a deferred value on access should one be."""

_REGISTRY_ATTRIBUTES = {"PatientID": 64, "AccessionNumber": 16, "StudyDate": 8}
"""Kept on the study row (at most the column's length) for the registry export; never logged (PHI)."""


class DatasetProblem(Exception):
    """Why a received data set is refused; ``reason`` names types, keywords, UIDs and byte offsets, never a value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unreadable(DatasetProblem):
    """The data set cannot be parsed, or it is truncated (a value runs past the end)."""


class Unusable(DatasetProblem):
    """A required UID is missing, unusable or differs from the request's, or the image has no Pixel Data."""


@dataclass(frozen=True)
class Header:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    patient_id: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    made_by_predictd: bool = False
    """A key image predictd made (its device UID in Contributing Equipment), sent back by a PACS: never classified."""


def read_header(fh: BinaryIO, sop_class: str, sop_instance: str) -> Header:
    """Parse everything before the pixel data and check the instance is one predictd can use; raise a
    :class:`DatasetProblem` if not.

    The dataset's SOP Class and Instance UIDs must equal the C-STORE request's: the spool path and the database row
    are keyed by them, and a mismatch means the sender is confused about what it sent.
    """
    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=True, defer_size=HEADER_DEFER_BYTES)
        stream = cast(BinaryIO, ds.buffer) if ds.buffer is not None else fh  # the inflated one, if deflated
        pixels_at = stream.tell()  # before any deferred value is read (that moves the stream)
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        uids = {kw: str(ds.get(kw) or "").strip() for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
        dataset_class = str(ds.get("SOPClassUID") or "").strip()
        modality = str(ds.get("Modality") or "").strip() or None
        registry = {kw: _text(ds, kw, size) for kw, size in _REGISTRY_ATTRIBUTES.items()}
        made_by_predictd = _made_by_predictd(ds)
    except Exception as exc:  # the parser's message may quote element values (PHI): the type and offset only
        raise Unreadable(f"data set cannot be parsed ({type(exc).__name__}{_position(fh)})") from exc
    missing = [kw for kw, value in uids.items() if not value]
    if missing:
        raise Unusable(f"required attribute missing: {', '.join(missing)}")
    if uids["SOPInstanceUID"] != sop_instance:
        raise Unusable("SOPInstanceUID differs from the request's AffectedSOPInstanceUID")
    if dataset_class and dataset_class != sop_class:
        raise Unusable("SOPClassUID differs from the request's AffectedSOPClassUID")
    try:
        for value in uids.values():
            check_uid(value)
    except ValueError as exc:
        raise Unusable(str(exc)) from exc
    stream.seek(pixels_at)
    check_pixel_data(stream, syntax, sources=[ds])
    return Header(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        transfer_syntax_uid=str(syntax),
        modality=modality,
        patient_id=registry["PatientID"],
        accession_number=registry["AccessionNumber"],
        study_date=registry["StudyDate"],
        made_by_predictd=made_by_predictd,
    )


def check_pixel_data(stream: BinaryIO, syntax: UID, *, sources: list[pydicom.Dataset] | None = None) -> None:
    """Return if ``stream``, positioned where ``dcmread(stop_before_pixels=True)`` left it, holds complete pixel
    data; raise :class:`Unusable` (none, empty, no fragments) or :class:`Unreadable` (truncated, malformed) if not.

    Only element and item headers are read, so this costs well under a millisecond whatever the image size; a cut
    encapsulated value costs one chunked scan of what remains (pydicom's search for the delimiter), still without
    keeping it. ``sources``: datasets whose patient values are cut from a library message.
    """
    start = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(start)
    elements = data_element_generator(stream, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=0)
    try:
        element = next(elements, None)
    except EOFError as exc:  # pydicom found no sequence delimiter before the end
        raise Unreadable("pixel data truncated (no sequence delimiter)") from exc
    except Exception as exc:  # an element header cut short (struct.error), or worse
        raise Unreadable(f"pixel data truncated or malformed ({type(exc).__name__} near byte {start})") from exc
    if element is None or element.tag not in PIXEL_TAGS:
        raise Unusable("no pixel data")
    if not isinstance(element, RawDataElement):  # undefined length read as a sequence (VR SQ, or UN taken for one)
        raise Unreadable(f"pixel data is a sequence of data sets (VR {element.VR})")
    if element.length == UNDEFINED_LENGTH:
        _check_fragments(stream, element.value_tell, stream.tell() - 8, end, sources or [])
        return
    if element.length == 0:
        raise Unusable("no pixel data (empty value)")
    if element.value_tell + element.length > end:
        raise Unreadable(f"pixel data truncated ({end - element.value_tell} of {element.length} bytes)")


def _check_fragments(
    stream: BinaryIO, value_at: int, delimiter_at: int, end: int, sources: list[pydicom.Dataset]
) -> None:
    """The items of encapsulated pixel data (basic offset table, fragments) end at the delimiter pydicom found,
    and the delimiter (8 bytes) is within the data."""
    stream.seek(value_at)
    try:
        items, offsets = parse_fragments(stream)  # the first item is the basic offset table
    except ValueError as exc:
        raise Unreadable(f"malformed encapsulated pixel data ({exception_text(exc, sources)})") from exc
    if items < 2:
        raise Unusable("no pixel data (no fragments)")
    stream.seek(offsets[-1] + 4)
    last_end = offsets[-1] + 8 + int.from_bytes(stream.read(4), "little")
    if last_end != delimiter_at or delimiter_at + 8 > end:
        raise Unreadable("pixel data truncated (fragment runs past the end)")


def _position(fh: BinaryIO) -> str:
    try:
        return f" near byte {fh.tell()}"
    except (OSError, ValueError):
        return ""


def _text(ds: pydicom.Dataset, keyword: str, size: int) -> str | None:
    value = str(ds.get(keyword) or "").strip()
    return value[:size] or None


def _made_by_predictd(ds: pydicom.Dataset) -> bool:
    """True when a Contributing Equipment item carries predictd's device UID (every SR and key image predictd makes).

    A PACS that auto-forwards whole studies sends predictd's key images back; classifying them would report on our
    own overlays and loop.
    """
    ours = device_uid()
    return any(str(item.get("DeviceUID") or "") == ours for item in ds.get("ContributingEquipmentSequence") or [])
