"""Helpers shared by every test tier: free ports, polling with a deadline, the real DICOM files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tests.support.real_cr import pydicom_data_root, real_cr_jlsl

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("PREDICTD_TEST_SHARED") or REPO.parent / "shared")
"""The project's shared folder (training images); a user's clone has none. Tests that need it are marked
``shared_data`` (tests/conftest.py skips them where it is absent, and fails them under CI)."""
SHARED_DATA = SHARED / "data"
RG2_HIP_JLSL = SHARED_DATA / "dicom" / "RG2_JLSL_hip_cr.dcm"
"""Real CR hip radiograph in ../shared, JPEG-LS lossless, 2140x1760, MONOCHROME2: only for ``shared_data`` tests."""
CR_JLSL = real_cr_jlsl()
"""The real CR every clone has: RG3's pixels (pydicom-data) as a portrait hip view, tagged HIP, JPEG-LS (real_cr.py)."""

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)
        last = predicate()
    return last


def pydicom_data_file(name: str) -> Path:
    """A file of the pydicom-data package (WG04 RG1/RG3 CR images, ...), found without network access."""
    root = pydicom_data_root()
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not in {root}")
    return path


def new_copy(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of a real file with new UIDs (so it is a new instance), optionally with attributes changed or removed."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(dst, enforce_file_format=True)
    return dst


def assert_dciodvfy_clean(path: Path) -> str:
    """Run dicom3tools' dciodvfy on ``path`` and fail on any "Error" line; returns its output (warnings included).

    Skipped where dciodvfy is not installed, except under CI, where a missing validator must fail, not pass.
    """
    import pytest

    binary = shutil.which("dciodvfy")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy (dicom3tools) is not installed, and CI must validate: apt-get install dicom3tools")
        pytest.skip("dciodvfy (dicom3tools) is not installed: apt-get install dicom3tools")
    result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert not errors, f"dciodvfy reported errors:\n{output}"
    return output


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def storescp(out: Path, ae_title: str, *options: str) -> Iterator[int]:
    """dcmtk storescp on a free port writing into ``out`` (``options`` before the AE title: TLS, syntaxes ...);
    yields the port once it listens. Skipped where dcmtk is missing, except under CI, where that fails."""
    import pytest

    exe = shutil.which("storescp")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("dcmtk storescp is not installed, and CI must run this test: apt-get install dcmtk")
        pytest.skip("dcmtk storescp not installed")
    port = free_port()
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, *options, "-aet", ae_title, "-od", str(out), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: listening(port) or proc.poll() is not None, timeout=20, what="storescp listening")
        assert proc.poll() is None, f"storescp exited: {proc.stderr.read() if proc.stderr else ''!r}"
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
