"""Work available: stages and the sweep wake the workers at once instead of the workers polling the queue.

A study becomes workable when it moves into a state a stage works on (the sweep makes it ready, classify leaves it
classified, an operator retries it) or when a waiting study is due now (a destination answers again). The code that
does this (:mod:`daemon.lifecycle`) marks its transaction; :class:`daemon.db.Database` notifies once the transaction
commits, so a worker never wakes for a change it cannot see yet.

- In one process: :class:`WorkAvailable`, a condition with a generation counter. A worker reads the generation
  before it looks for work and waits for it to change, so a notification between "found nothing" and "wait" is
  never lost.
- Across processes on PostgreSQL: the same transaction also runs ``NOTIFY predictd_work`` (delivered on commit);
  every ``serve`` process LISTENs on a connection of its own (:func:`listen`) and notifies its workers.
  On SQLite, other processes on the same file are not told: they find the work at their next poll.

Polling stays as a slow safety net (``workers.poll_seconds``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.orm import Session

from predictd.daemon.log import Event, get_logger
from predictd.models.phi import exception_text

if TYPE_CHECKING:
    from predictd.daemon.db import Database

CHANNEL = "predictd_work"
_MARK = "predictd_work_available"

log = get_logger("wakeup")


class WorkAvailable:
    """Wakes the threads waiting for work; cheap to call when nobody waits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """Until a notification newer than generation ``seen``, or ``timeout`` seconds; True when woken."""
        with self._cond:
            return self._cond.wait_for(lambda: self._generation != seen, timeout)


def mark(session: Session, *, postgres: bool) -> None:
    """This transaction makes work available: notify when it commits (and on PostgreSQL, other processes too)."""
    if session.info.get(_MARK):
        return
    session.info[_MARK] = True
    if postgres:
        session.execute(text(f"NOTIFY {CHANNEL}"))


def marked(session: Session) -> bool:
    """Whether the transaction marked work available (read, and cleared, by the database after commit)."""
    return bool(session.info.pop(_MARK, False))


def listen(db: Database, stop: threading.Event, *, timeout: float = 5.0) -> None:
    """LISTEN for other processes' notifications until ``stop`` is set; each one wakes this process's workers.

    A connection of its own, in autocommit; when it breaks (database restart) it is opened again after ``timeout``,
    and the workers' poll covers the gap. Run in a daemon thread by ``serve`` on PostgreSQL only.
    """
    import psycopg  # the PostgreSQL driver, only where it is the database

    conninfo = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                while not stop.is_set():
                    for _ in conn.notifies(timeout=timeout, stop_after=1):
                        db.work_available.notify()
        except Exception as exc:  # a database outage must not end the listener
            log.warning(Event.JOB_FAILED, job="listen", reason=exception_text(exc))
            stop.wait(timeout)
