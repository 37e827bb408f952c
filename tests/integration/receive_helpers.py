"""What the receiver tests share: SCU helpers (pynetdicom, dcmtk storescu) and SOP class constants."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

from tests.integration.receivers import CALLED, CALLING

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
GRAYSCALE_PR = "1.2.840.10008.5.1.4.1.1.11.1"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


def c_store(
    port: int,
    items: list[pydicom.Dataset | Path],
    *,
    calling: str = CALLING,
    called: str = CALLED,
    raw: bool = False,
    comments: list[str | None] | None = None,
) -> list[int]:
    """C-STORE each item on one association; returns the statuses. ``raw`` sends files' bytes as-is (chunked send).
    ``comments`` collects each response's Error Comment (None when there is none)."""
    metas = [read_file_meta_info(i) if isinstance(i, Path) else i.file_meta for i in items]
    ae = AE(ae_title=calling)
    for meta in metas:
        ae.add_requested_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association not established"
    statuses = []
    try:
        for item in items:
            before = _config.STORE_SEND_CHUNKED_DATASET
            _config.STORE_SEND_CHUNKED_DATASET = raw and isinstance(item, Path)
            try:
                rsp = assoc.send_c_store(item)
            finally:
                _config.STORE_SEND_CHUNKED_DATASET = before
            statuses.append(int(rsp.Status))
            if comments is not None:
                comments.append(str(rsp.ErrorComment) if "ErrorComment" in rsp else None)
    finally:
        assoc.release()
    return statuses


def storescu(port: int, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("storescu")
    if exe is None:
        pytest.skip("dcmtk storescu not installed")
    return subprocess.run(
        [exe, *args, "-aet", CALLING, "-aec", CALLED, "127.0.0.1", str(port), str(path)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def pixel_data(path: Path) -> bytes:
    return bytes(pydicom.dcmread(path).PixelData)


# --- accepted ----------------------------------------------------------------------------------------------------
