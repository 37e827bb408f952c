"""Transcode a real DICOM file into another transfer syntax, as a PACS or modality would have sent it.

Each copy gets a NEW SOP Instance UID (and MediaStorageSOPInstanceUID): dcmcjpeg/dcmcjpls/dcmcrle keep the UID of
their input, and two different encodings under one UID look like a duplicate to a PACS or to our spool.

How each syntax is made:

- dcmtk where it has an encoder: ``dcmconv`` (explicit/implicit VR little endian, deflate), ``dcmcrle`` (RLE),
  ``dcmcjpeg`` (JPEG baseline, extended, lossless SV1), ``dcmcjpls`` (JPEG-LS lossless and near-lossless, NEAR=2).
- pydicom's ``Dataset.compress()`` with pylibjpeg-openjpeg for JPEG 2000 (lossless, and lossy at 20:1), which the free
  dcmtk cannot write.
- HTJ2K is left out: neither dcmtk 3.6.7, pydicom 3.0.2 nor pylibjpeg-openjpeg 2.6 can *encode* it here (pydicom
  decodes it with pylibjpeg-openjpeg, but there is no file to try it on).

Lossy JPEG and bit depth (:data:`MAX_BITS`): ``jpeg_baseline`` is for 8-bit sources and ``jpeg_extended`` for at
most 12 bits stored; :func:`transcode` refuses deeper sources (check :func:`accepts` first) unless
``allow_rescale=True``. Note that dcmcjpeg's lossy modes always rescale the stored values to the full 8/12-bit range
(min-max, ``+sp``) and adjust WindowCenter/Width to match, even for a 10-bit source: the displayed image survives
(``to_gray`` within ~0.5 % here), the raw stored values do not. With ``allow_rescale`` a 15-bit source is squeezed
into 8 or 12 bits the same way, as a PACS making "web quality" copies would.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pydicom
from pydicom.pixels import get_encoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

SYNTAXES: dict[str, str] = {
    "explicit_le": ExplicitVRLittleEndian,
    "implicit_le": ImplicitVRLittleEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg_baseline": JPEGBaseline8Bit,
    "jpeg_extended": JPEGExtended12Bit,
    "jpeg_lossless": JPEGLosslessSV1,
    "jpegls_lossless": JPEGLSLossless,
    "jpegls_near": JPEGLSNearLossless,
    "j2k_lossless": JPEG2000Lossless,
    "j2k_lossy": JPEG2000,
}
"""Short name → transfer syntax UID of every syntax :func:`transcode` can write (no HTJ2K: no encoder here)."""

LOSSLESS: frozenset[str] = frozenset(
    {"explicit_le", "implicit_le", "deflate", "rle", "jpeg_lossless", "jpegls_lossless", "j2k_lossless"}
)
"""Syntaxes whose decoded pixels equal the source's bit for bit."""

MAX_BITS: dict[str, int] = {"jpeg_baseline": 8, "jpeg_extended": 12}
"""Most bits stored a source may have for these syntaxes (the others take up to 16)."""

JPEGLS_NEAR = 2
"""NEAR parameter of ``jpegls_near``: every decoded pixel is within ±2 of the source."""

J2K_LOSSY_RATIO = 20.0
"""Compression ratio of ``j2k_lossy``."""

_DCMTK: dict[str, list[str]] = {
    # +un: keep the (new) UID we gave the input; dcmcjpeg would otherwise make yet another one for lossy output.
    "explicit_le": ["dcmconv", "+te"],
    "implicit_le": ["dcmconv", "+ti"],
    "deflate": ["dcmconv", "+td"],
    "rle": ["dcmcrle", "+un"],
    "jpeg_baseline": ["dcmcjpeg", "+eb", "+un"],
    "jpeg_extended": ["dcmcjpeg", "+ee", "+un"],
    "jpeg_lossless": ["dcmcjpeg", "+e1", "+un"],
    "jpegls_lossless": ["dcmcjpls", "+el", "+un"],
    "jpegls_near": ["dcmcjpls", "+en", "+md", str(JPEGLS_NEAR), "+un"],
}

_LOSSY_METHOD = {"j2k_lossy": "ISO_15444_1"}
"""LossyImageCompressionMethod for the pydicom-written lossy syntaxes (dcmtk sets it itself)."""


class TranscodeToolMissing(RuntimeError):
    """A command-line tool or pydicom encoder plugin needed for a syntax is not installed."""


def accepts(bits_stored: int, syntax: str) -> bool:
    """Whether a source with ``bits_stored`` can be written in ``syntax`` without rescaling its pixel values."""
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown syntax {syntax!r}; known: {', '.join(SYNTAXES)}")
    return bits_stored <= MAX_BITS.get(syntax, 16)


def transcode(src: Path, syntax: str, dst: Path, *, allow_rescale: bool = False) -> Path:
    """Write a copy of ``src`` in ``syntax`` (a key of :data:`SYNTAXES`) to ``dst``, with a new SOP Instance UID.

    Raises ValueError for an unknown syntax or a source with too many bits for it (unless ``allow_rescale``),
    TranscodeToolMissing when the dcmtk tool or the pydicom encoder plugin is not installed, and RuntimeError
    when the tool fails or writes something else than asked.
    """
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown syntax {syntax!r}; known: {', '.join(SYNTAXES)}")
    _check_tools(syntax)
    ds = pydicom.dcmread(src)
    bits = int(ds.BitsStored)
    if not (allow_rescale or accepts(bits, syntax)):
        raise ValueError(
            f"{syntax} takes at most {MAX_BITS[syntax]} bits stored; {src.name} has {bits} (allow_rescale=True "
            "lets dcmcjpeg scale the values down)"
        )
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)  # UID is replaced below anyway
    elif ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    dst.parent.mkdir(parents=True, exist_ok=True)
    if syntax in _DCMTK:
        with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
            native = Path(tmp) / "native.dcm"
            ds.save_as(native, enforce_file_format=True)
            _run([*_DCMTK[syntax], str(native), str(dst)])
    else:
        uid_ts = SYNTAXES[syntax]
        if syntax == "j2k_lossy":
            ds.compress(uid_ts, j2k_cr=[J2K_LOSSY_RATIO], generate_instance_uid=False)
        else:
            ds.compress(uid_ts, generate_instance_uid=False)
        if syntax in _LOSSY_METHOD:
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionMethod = _LOSSY_METHOD[syntax]
        ds.save_as(dst, enforce_file_format=True)
    written = pydicom.dcmread(dst, stop_before_pixels=True)
    if written.file_meta.TransferSyntaxUID != SYNTAXES[syntax] or written.SOPInstanceUID != uid:
        raise RuntimeError(
            f"{dst} came out as {written.file_meta.TransferSyntaxUID} / {written.SOPInstanceUID}, "
            f"expected {SYNTAXES[syntax]} / {uid}"
        )
    return dst


def _check_tools(syntax: str) -> None:
    if syntax in _DCMTK:
        tool = _DCMTK[syntax][0]
        if shutil.which(tool) is None:
            raise TranscodeToolMissing(f"{tool} not found on PATH, needed for {syntax}: install dcmtk")
        return
    encoder = get_encoder(SYNTAXES[syntax])
    if not encoder.is_available:
        missing = "; ".join(encoder.missing_dependencies) or "no plugin"
        raise TranscodeToolMissing(f"no pydicom encoder plugin for {syntax} ({UID(SYNTAXES[syntax]).name}): {missing}")


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
