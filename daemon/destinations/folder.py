"""The outbox folder (``type = "folder"``): the destination when none is configured; files, not a network peer.

Each study gets a folder under ``send.outbox_dir``: its SR with the report text beside it, and any key images, each
written durably (:func:`daemon.spool.durable_copy`), so a dictation system or a person can pick them up. A failed
write (disk full, folder gone) is retryable: the same files are written again once the folder takes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from predictd.daemon.destinations.base import Parcel, SendError
from predictd.daemon.spool import durable_copy, durable_write


@dataclass(frozen=True)
class FolderDestination:
    """The outbox folder as a destination; built by the send stage from ``send.outbox_dir``, not configured."""

    name: str
    path: Path
    type: Literal["folder"] = "folder"


def deliver(parcel: Parcel, dest: FolderDestination) -> None:
    """The document (and, for the SR, its report text) into ``<path>/<study UID>/``, written durably."""
    folder = dest.path / parcel.study_uid
    try:
        durable_copy(parcel.path, folder / f"{parcel.sop_instance_uid}.dcm")
        if parcel.report_text is not None:
            durable_write(folder / f"{parcel.sop_instance_uid}.txt", parcel.report_text.encode() + b"\n")
    except OSError as exc:
        raise SendError(f"cannot write to the outbox folder {dest.path}: {exc}", retryable=True) from exc
