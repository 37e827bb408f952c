"""Workers are woken when work appears: in-process by the commit that made it, across processes by NOTIFY.

The workers' poll is a minute here, so only a wakeup can make them act within the deadlines below.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from predictd.daemon import arrivals, queue, views, wakeup
from predictd.daemon.db import Database, utcnow
from predictd.daemon.wakeup import listen
from predictd.daemon.worker import Worker
from tests.integration.pipeline_helpers import context, copy_as_new_study, receive_file
from tests.support import CR_JLSL, wait_until


def _state(db: Database, study_uid: str) -> str:
    detail = views.study_detail(db, study_uid)
    return "" if detail is None else str(detail["state"])


def test_the_sweep_wakes_an_idle_worker_and_each_stage_the_next(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db, workers={"poll_seconds": 60})
    worker = Worker(ctx, "test-worker")
    worker.start()
    try:
        stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
        assert arrivals.sweep_ready(db, quiet_seconds=0) == [stored.study_uid]  # the commit wakes the worker
        done = wait_until(lambda: _state(db, stored.study_uid) == "done", timeout=30, what="all stages, no poll")
        assert done
    finally:
        worker.stop(timeout=30)


def test_a_rolled_back_transaction_wakes_nobody(db: Database) -> None:
    seen = db.work_available.generation
    try:
        with db.transaction() as s:
            wakeup.mark(s, postgres=not db.is_sqlite)
            raise RuntimeError("the change is not committed")
    except RuntimeError:
        pass
    assert not db.work_available.wait(seen, timeout=0.2)


def test_notify_reaches_another_process_listening_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """Two Database objects, two connection pools: what two `serve` processes on one PostgreSQL have in common."""
    writer, reader = Database(postgres_url), Database(postgres_url)
    writer.upgrade()
    stop = threading.Event()
    listener = threading.Thread(target=listen, args=(reader, stop), kwargs={"timeout": 0.5}, daemon=True)
    listener.start()
    try:
        ctx = context(tmp_path, writer)
        stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
        first = reader.work_available.generation

        def listening() -> bool:  # a bare NOTIFY until one arrives: from then on the listener has LISTENed
            with writer.transaction() as s:
                wakeup.mark(s, postgres=True)
            return reader.work_available.generation != first

        wait_until(listening, timeout=30, interval=0.2, what="the listener to LISTEN")

        def settled() -> bool:  # the bare NOTIFYs still in flight have arrived: a second with none
            return not reader.work_available.wait(reader.work_available.generation, timeout=1.0)

        wait_until(settled, timeout=30, what="no NOTIFY in flight")
        seen = reader.work_available.generation
        assert arrivals.sweep_ready(writer, quiet_seconds=0) == [stored.study_uid]
        assert reader.work_available.wait(seen, timeout=30)  # the sweep's commit told the other pool
    finally:
        stop.set()
        listener.join(timeout=10)
        writer.dispose()
        reader.dispose()


def test_an_idle_worker_wakes_when_a_deferred_study_comes_due(db: Database, tmp_path: Path) -> None:
    """A time coming due notifies nobody: an idle worker waits until the earliest (queue.next_due), not its poll."""
    ctx = context(tmp_path, db, workers={"poll_seconds": 60})
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    arrivals.sweep_ready(db, quiet_seconds=0)
    held = queue.claim(db, "someone-else", lease_seconds=60)
    assert held is not None
    queue.defer(db, held, until=utcnow() + timedelta(seconds=1))
    due = queue.next_due(db)
    assert due is not None and due > utcnow()
    worker = Worker(ctx, "test-worker")
    worker.start()
    try:
        assert wait_until(lambda: _state(db, stored.study_uid) == "done", timeout=30, what="the deferred study, due")
    finally:
        worker.stop(timeout=30)
    assert queue.next_due(db) is None
