"""Which open associations brought which studies, so a released association can say "this study is complete".

Most senders deliver a study in one association (Orthanc's auto-forward, a modality's send, mercure's dispatch) and
release it when done. When an association is released normally and no other association still open in this process
has brought instances of a study it brought, the sender is done with that study: the queue calls it complete after
``queue.release_grace_seconds`` instead of the whole quiet window. An aborted association, or a connection that
drops without a release, says nothing (the quiet window decides), and neither does one that brought nothing.

The receiver's threads call this from pynetdicom's event handlers, so every method takes the lock. Only this
process's associations are known: with several receivers on one queue, a study split across hosts is decided by
the quiet window on each, or by a release whose grace ends before the other host's next instance arrives (which
reopens nothing: the arrival clears the mark, :func:`daemon.lifecycle.instance_arrived`).
"""

from __future__ import annotations

import threading
from collections import defaultdict


class AssociationTracker:
    """Open association → the studies it brought instances of; studies → how many open associations brought them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._studies: dict[int, set[str]] = defaultdict(set)
        self._open_with: dict[str, int] = defaultdict(int)

    def arrived(self, association: int, study_uid: str) -> None:
        """An instance of ``study_uid`` was stored on ``association`` (any hashable id of it)."""
        with self._lock:
            brought = self._studies[association]
            if study_uid not in brought:
                brought.add(study_uid)
                self._open_with[study_uid] += 1

    def released(self, association: int) -> list[str]:
        """The association was released normally: the studies it brought that no other open association brought."""
        return self._close(association, done=True)

    def closed(self, association: int) -> None:
        """The association ended otherwise (aborted, connection lost), or after its release was handled: forget it."""
        self._close(association, done=False)

    def _close(self, association: int, *, done: bool) -> list[str]:
        with self._lock:
            brought = self._studies.pop(association, set())
            complete = []
            for study_uid in sorted(brought):
                self._open_with[study_uid] -= 1
                if self._open_with[study_uid] <= 0:
                    del self._open_with[study_uid]
                    complete.append(study_uid)
            return complete if done else []

    def open_associations(self, study_uid: str) -> int:
        """How many open associations have brought instances of ``study_uid`` (for tests and the operator)."""
        with self._lock:
            return self._open_with.get(study_uid, 0)
