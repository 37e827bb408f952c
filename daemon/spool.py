"""Stage 2, the spool: received instances and built documents on disk, written so a crash never leaves half a file.

Layout (UID-based, so a path can be rebuilt from a database row and nothing depends on patient data)::

    <root>/instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    <root>/documents/<StudyInstanceUID>/run-<n>/<SOPInstanceUID>.dcm
    <root>/documents/<StudyInstanceUID>/run-<n>/overlay-<prediction index>.png   (key-image overlays, from classify)

Every write goes to a temporary file in the target folder, is fsynced, renamed over the final name (atomic on POSIX)
and the folder is fsynced, so after a power loss a file is either complete or absent. The receiver answers Success
only after this, which is what lets a modality delete its copy.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

Writer = Callable[[BinaryIO], None]

# UIDs become folder and file names: only these characters, so a hostile peer cannot walk out of the spool ("../").
# Real UIDs are digits and dots; letters, "-" and "_" are tolerated for the broken ones some devices send.
_SAFE_UID = re.compile(r"^[0-9A-Za-z_-][0-9A-Za-z._-]{0,127}$")


def check_uid(uid: str) -> str:
    """Return ``uid`` if it is safe as a file name, else raise ValueError (the caller rejects the instance)."""
    uid = uid.strip()
    if not _SAFE_UID.match(uid) or ".." in uid:
        raise ValueError(f"UID {uid[:80]!r} cannot be used as a file name")
    return uid


class Spool:
    """The files of one predictd installation (shared by every process on the same spool directory)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- layout ------------------------------------------------------------------------------------------------

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.root / "instances" / check_uid(study_uid) / check_uid(series_uid) / f"{check_uid(sop_uid)}.dcm"

    def document_path(self, study_uid: str, run_no: int, sop_uid: str) -> Path:
        return self.root / "documents" / check_uid(study_uid) / f"run-{int(run_no)}" / f"{check_uid(sop_uid)}.dcm"

    def overlay_path(self, study_uid: str, run_no: int, prediction_index: int) -> Path:
        """The key-image overlay (PNG) classify drew for the run's prediction number ``prediction_index``."""
        return (
            self.root
            / "documents"
            / check_uid(study_uid)
            / f"run-{int(run_no)}"
            / f"overlay-{int(prediction_index)}.png"
        )

    def overlay_paths(self, study_uid: str, run_no: int) -> list[Path]:
        """Every overlay of the run now on disk (a retried classify removes them before drawing its own)."""
        return sorted((self.root / "documents" / check_uid(study_uid) / f"run-{int(run_no)}").glob("overlay-*.png"))

    # --- writing -----------------------------------------------------------------------------------------------

    def write_instance(self, study_uid: str, series_uid: str, sop_uid: str, write: Writer | bytes) -> tuple[Path, int]:
        """Durably store one received instance; returns its path and size in bytes.

        ``write`` is the Part 10 file as bytes, or a function that writes it to the open file (so a large dataset
        received in chunks is streamed from pynetdicom's temporary file, never held in memory). A repeated
        instance replaces the file atomically; readers holding the old one keep reading the old one.
        """
        path = self.instance_path(study_uid, series_uid, sop_uid)
        size = _durable_write(path, write)
        return path, size

    def adopt_instance(self, study_uid: str, series_uid: str, sop_uid: str, received: Path) -> tuple[Path, int]:
        """Durably move a received file (pynetdicom's temp file in ``<spool>/tmp``) into place: fsync, rename, fsync.

        A rename instead of a copy, since both live on the spool's file system; a file elsewhere is copied.
        """
        path = self.instance_path(study_uid, series_uid, sop_uid)
        if os.stat(received).st_dev != os.stat(self.root).st_dev:
            with open(received, "rb") as fin:
                return path, _durable_write(path, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20))
        _make_dirs(path.parent)
        with open(received, "rb") as fh:
            os.fsync(fh.fileno())
            size = os.fstat(fh.fileno()).st_size
        os.replace(received, path)
        _fsync_dir(path.parent)
        return path, size

    def write_dataset(self, ds: pydicom.Dataset, path: Path) -> Path:
        """Durably write a built document (an SR) as a DICOM Part 10 file with correct file meta.

        highdicom documents carry their transfer syntax; a bare dataset without one is written explicit VR little
        endian (its file meta gains that Transfer Syntax UID).
        """
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", FileMetaDataset()):
            if not hasattr(ds, "file_meta"):
                ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        _durable_write(path, lambda fh: ds.save_as(fh, enforce_file_format=True))
        return path

    # --- space and retention -----------------------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Free space on the spool's file system, as the receiver's out-of-space guard sees it."""
        return int(shutil.disk_usage(self.root).free)

    def purge(self, study_uid: str, instance_paths: Iterable[Path], run_nos: Iterable[int]) -> int:
        """Delete these instance files and the documents of these runs of a study; returns how many files went.

        Only what is named: a late instance written into the study's folder meanwhile stays. Emptied folders are
        left in place (a receiver may be about to write into them). Missing files are fine (a purge retried after
        a crash); database rows stay for audit.
        """
        uid = check_uid(study_uid)
        removed = 0
        for path in instance_paths:
            try:
                Path(path).unlink()
                removed += 1
            except FileNotFoundError:
                pass
        for run_no in run_nos:
            folder = self.root / "documents" / uid / f"run-{int(run_no)}"
            if folder.is_dir():
                removed += sum(1 for p in folder.rglob("*") if p.is_file())
                shutil.rmtree(folder)
                _fsync_dir(folder.parent)
        return removed


# --- durable file operations (also used by the send stage for the outbox folder) -------------------------------------


def durable_write(dst: Path, data: bytes) -> Path:
    """Write ``data`` to ``dst`` atomically and durably (temp file, fsync, rename, fsync folder)."""
    _durable_write(Path(dst), data)
    return Path(dst)


def durable_copy(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` atomically and durably, so a folder watcher never picks up half a file."""
    with open(src, "rb") as fin:
        _durable_write(Path(dst), lambda fout: shutil.copyfileobj(fin, fout, 1 << 20))
    return Path(dst)


def _durable_write(path: Path, write: Writer | bytes) -> int:
    """The one place that writes a final file: temp file in the same folder, fsync, atomic rename, fsync folder."""
    _make_dirs(path.parent)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as fh:
            if isinstance(write, bytes | bytearray | memoryview):
                fh.write(write)
            else:
                write(fh)
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return size


def _make_dirs(folder: Path) -> None:
    """mkdir -p that also fsyncs the parent of every folder it creates, so the new entries survive a crash."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue  # another thread or process made it first
        _fsync_dir(d.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
