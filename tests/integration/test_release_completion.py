"""A study is complete when its sender releases the association that brought it, not only after the quiet window.

Real senders: dcmtk storescu (one association per run) and a pynetdicom SCU that holds its association open; a real
receiver, SQLite queue and spool. The quiet window is an hour here, so only a release can make a study ready.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE

from predictd.daemon import arrivals
from predictd.daemon.lifecycle import StudyState
from tests.integration.receive_helpers import storescu
from tests.integration.receivers import CALLED, CALLING, Running
from tests.support import new_copy, pydicom_data_file, wait_until

HOUR = 3600.0


def _study_files(tmp_path: Path, n: int, study_uid: str | None = None) -> tuple[str, list[Path]]:
    study_uid = study_uid or generate_uid()
    src = pydicom_data_file("RG1_UNCR.dcm")
    folder = tmp_path / "sent" / study_uid[-8:]  # the receiver's spool and database are in tmp_path too
    folder.mkdir(parents=True)
    files = [new_copy(src, folder / f"{i}.dcm", StudyInstanceUID=study_uid) for i in range(n)]
    return study_uid, files


def _ready(rx: Running) -> list[str]:
    return arrivals.sweep_ready(rx.db, quiet_seconds=HOUR, release_grace_seconds=0)


def _state(rx: Running, study_uid: str) -> str | None:
    study = rx.study(study_uid)
    return None if study is None else study.state


def _held_association(port: int, files: list[Path]) -> object:
    """A pynetdicom SCU that stores ``files`` and keeps the association open (the caller releases or aborts it)."""
    ae = AE(ae_title=CALLING)
    for f in files:
        meta = pydicom.dcmread(f, stop_before_pixels=True)
        ae.add_requested_context(str(meta.SOPClassUID), [str(meta.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    assert assoc.is_established
    for f in files:
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0x0000
    return assoc


def test_one_association_released_makes_its_study_ready(start_receiver: Callable[..., Running], tmp_path: Path) -> None:
    rx = start_receiver(release_grace=0)
    study_uid, files = _study_files(tmp_path, 2)
    assert storescu(rx.port, files[0].parent, "+sd").returncode == 0  # both files, one association
    assert wait_until(lambda: study_uid in _ready(rx), timeout=20, what="the released study to be ready")
    study = rx.study(study_uid)
    assert study is not None and study.state == StudyState.READY
    assert study.reason == "its sender released the association that brought it"


def test_a_study_another_open_association_brought_waits_for_it(
    start_receiver: Callable[..., Running], tmp_path: Path
) -> None:
    rx = start_receiver(release_grace=0)
    study_uid, files = _study_files(tmp_path, 2)
    held = _held_association(rx.port, files[:1])
    try:
        assert storescu(rx.port, files[1]).returncode == 0  # released, but the held one brought the study too
        assert wait_until(lambda: len(rx.instances()) == 2, timeout=20, what="both instances")
        assert _ready(rx) == [] and _state(rx, study_uid) == StudyState.RECEIVING
    finally:
        held.release()  # type: ignore[attr-defined]
    assert wait_until(lambda: study_uid in _ready(rx), timeout=20, what="the study once the last sender released")


def test_an_aborted_association_leaves_the_quiet_window_to_decide(
    start_receiver: Callable[..., Running], tmp_path: Path
) -> None:
    rx = start_receiver(release_grace=0)
    study_uid, files = _study_files(tmp_path, 1)
    held = _held_association(rx.port, files)
    held.abort()  # type: ignore[attr-defined]
    assert wait_until(lambda: rx.receiver._ae is not None and not rx.receiver._ae.active_associations, timeout=20)
    assert _ready(rx) == [] and _state(rx, study_uid) == StudyState.RECEIVING
    assert arrivals.sweep_ready(rx.db, quiet_seconds=0, release_grace_seconds=0) == [study_uid]  # the fallback


def test_an_instance_after_the_release_restarts_the_wait(
    start_receiver: Callable[..., Running], tmp_path: Path
) -> None:
    rx = start_receiver(release_grace=0)
    study_uid, files = _study_files(tmp_path, 2)
    held = _held_association(rx.port, files[:1])
    held.release()  # type: ignore[attr-defined]
    assert wait_until(lambda: (s := rx.study(study_uid)) is not None and s.sender_done_at is not None, timeout=20)
    late = _held_association(rx.port, files[1:])  # the sender comes back before the sweep ran
    try:
        assert _ready(rx) == [] and _state(rx, study_uid) == StudyState.RECEIVING
    finally:
        late.release()  # type: ignore[attr-defined]
    assert wait_until(lambda: study_uid in _ready(rx), timeout=20, what="the study after the second release")


def test_without_the_release_hook_only_the_quiet_window_counts(
    start_receiver: Callable[..., Running], tmp_path: Path
) -> None:
    rx = start_receiver()  # complete_on_release = false
    study_uid, files = _study_files(tmp_path, 1)
    assert storescu(rx.port, files[0]).returncode == 0
    assert wait_until(lambda: rx.study(study_uid) is not None, timeout=20)
    assert _ready(rx) == []
