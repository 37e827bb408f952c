"""Where pynetdicom streams an incoming data set: a ``tmp`` folder on the spool's file system, never the system's.

With chunked receive pynetdicom writes each C-STORE data set to ``NamedTemporaryFile(delete=False)`` in the system
temp folder and deletes it after the handler returns; an association that aborts mid-transfer leaves the file there
for good (tens of MB with the patient's name in it), outside the spool's free-space watermark. pynetdicom (3.0) has
no setting for that folder, so :func:`install` points its ``NamedTemporaryFile`` at ``<spool>/tmp`` (created 0600,
as ``mkstemp`` does). Being on the spool's file system also lets the handler rename the file into the spool instead
of copying it (:meth:`daemon.spool.Spool.adopt_instance`), and counts it against ``receive.min_free_bytes``.

Left-overs go two ways: the partial file of an association whose connection closes is deleted at once
(:func:`discard_partial`, bound to ``EVT_CONN_CLOSE``), and whatever a killed process left is swept when the
receiver starts (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom import dimse_messages, evt

PREFIX = "incoming-"


def folder(spool_root: Path) -> Path:
    """``<spool>/tmp``, created 0700."""
    path = Path(spool_root) / "tmp"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def install(spool_root: Path) -> Path:
    """Make pynetdicom write incoming data sets into ``<spool>/tmp`` (process-wide, like its chunked-receive switch)."""
    target = folder(spool_root)
    dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[assignment]
        tempfile.NamedTemporaryFile, dir=str(target), prefix=PREFIX
    )
    return target


def sweep(spool_root: Path) -> int:
    """Delete what an earlier process left in ``<spool>/tmp`` (call before listening); returns how many went."""
    removed = 0
    for path in folder(spool_root).glob(f"{PREFIX}*"):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def discard_partial(event: evt.Event) -> None:
    """On a closed connection, delete the data set pynetdicom was still receiving (an aborted C-STORE)."""
    message: Any = getattr(getattr(event.assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    with contextlib.suppress(OSError):
        partial.close()
    Path(partial.name).unlink(missing_ok=True)


@contextmanager
def received(event: evt.Event) -> Iterator[tuple[BinaryIO, Path | bytes]]:
    """The received Part 10 file, open for reading, plus where it lives (the temp file, or bytes in memory)."""
    try:
        path: Path | None = event.dataset_path
    except AttributeError:
        path = None
    if path is None:  # chunked receive switched off: the data set is in memory
        data = event.encoded_dataset()
        yield io.BytesIO(data), data
        return
    with open(path, "rb") as fh:
        yield fh, Path(path)
