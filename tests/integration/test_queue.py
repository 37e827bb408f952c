"""The queue on real SQLite and PostgreSQL: readiness, exactly-once claims, leases, retries, late instances."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from predictd.daemon import arrivals, leases, queue, records
from predictd.daemon.db import Database, utcnow
from predictd.daemon.lifecycle import IllegalTransition, StudyEventKind, StudyState
from predictd.daemon.tables import Instance, Study, StudyEvent
from tests.integration.queue_helpers import ready_studies, stored

POLICY = queue.RetryPolicy(max_attempts=3, base_seconds=10, cap_seconds=25)


def state_of(db: Database, study_uid: str) -> Study:
    with db.transaction() as s:
        study = s.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None
        return study


def test_study_is_ready_only_after_quiet_seconds(db: Database) -> None:
    t0 = utcnow()
    inst = stored(modality="DX")
    assert arrivals.note_instance(db, inst, now=t0)
    assert not arrivals.note_instance(db, inst, now=t0)  # the same SOP Instance UID again: idempotent
    assert arrivals.sweep_ready(db, quiet_seconds=10, now=t0 + timedelta(seconds=9)) == []
    assert arrivals.sweep_ready(db, quiet_seconds=10, by_modality={"DX": 3}, now=t0 + timedelta(seconds=4)) == [
        inst.study_uid
    ]
    assert state_of(db, inst.study_uid).state == StudyState.READY


def test_instance_before_claim_restarts_the_quiet_period(db: Database) -> None:
    t0 = utcnow()
    first = stored()
    arrivals.note_instance(db, first, now=t0)
    arrivals.sweep_ready(db, quiet_seconds=1, now=t0 + timedelta(seconds=2))
    arrivals.note_instance(db, stored(first.study_uid), now=t0 + timedelta(seconds=3))
    assert state_of(db, first.study_uid).state == StudyState.RECEIVING


def test_a_further_instance_keeps_the_latest_arrival_and_fills_only_what_is_unknown(db: Database) -> None:
    """The receiver's Core path (an open study taking one more instance) writes what the ORM path would."""
    t0 = utcnow()
    first = replace(stored(), modality=None, patient_id=None, accession_number="A1")
    arrivals.note_instance(db, first, now=t0)
    assert arrivals.sender_done(db, [first.study_uid], grace_seconds=1, actor="test", now=t0) == [first.study_uid]
    later = replace(stored(first.study_uid), patient_id="P1", accession_number="A2", study_date="20261201")
    assert arrivals.note_instance(db, later, now=t0 + timedelta(seconds=5))
    assert not arrivals.note_instance(db, later, now=t0 + timedelta(seconds=6))  # a repeat: no row, no change
    arrivals.note_instance(db, stored(first.study_uid, modality="DX"), now=t0 + timedelta(seconds=2))  # stamped earlier
    study = state_of(db, first.study_uid)
    assert study.last_instance_at == t0 + timedelta(seconds=5)
    assert study.sender_done_at is None  # more came after the release: the release no longer decides
    assert (study.modality, study.patient_id, study.accession_number, study.study_date) == (
        "CR",
        "P1",
        "A1",
        "20261201",
    )
    with db.transaction() as s:
        assert s.scalar(select(func.count(Instance.id)).where(Instance.study_id == study.id)) == 3


@pytest.mark.parametrize("workers,studies", [(6, 40)])
def test_concurrent_workers_claim_each_study_exactly_once(db: Database, workers: int, studies: int) -> None:
    uids = ready_studies(db, studies, utcnow())
    claimed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(workers)

    def work(i: int) -> None:
        # Each worker has its own engine and connection pool, as separate processes would.
        own = Database(db.url)
        try:
            start.wait()
            while (c := queue.claim(own, f"w{i}", lease_seconds=60, states=[StudyState.READY])) is not None:
                with lock:
                    claimed.append(c.study_uid)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(claimed) == sorted(uids)  # every study once, none twice


def test_expired_lease_is_reaped_and_the_old_worker_cannot_write(db: Database) -> None:
    t0 = utcnow()
    (uid,) = ready_studies(db, 1, t0)
    stale = queue.claim(db, "crashed", lease_seconds=5, now=t0)
    assert stale is not None
    assert leases.reap(db, policy=POLICY, now=t0 + timedelta(seconds=4)) == []
    assert leases.reap(db, policy=POLICY, now=t0 + timedelta(seconds=6)) == [uid]
    study = state_of(db, uid)
    assert study.claimed_by is None and study.attempts == 1 and study.state == StudyState.READY
    # The reaped attempt backs off like any failure; after the delay another worker takes it.
    assert queue.claim(db, "healthy", lease_seconds=5, now=t0 + timedelta(seconds=7)) is None
    fresh = queue.claim(db, "healthy", lease_seconds=60, now=t0 + timedelta(seconds=17))
    assert fresh is not None and fresh.study_uid == uid
    with pytest.raises(queue.LeaseLost):
        queue.finish(db, stale, StudyState.CLASSIFIED)
    with pytest.raises(queue.LeaseLost):
        queue.heartbeat(db, stale, lease_seconds=60)
    assert queue.finish(db, fresh, StudyState.CLASSIFIED) == StudyState.CLASSIFIED


def test_claims_of_dead_processes_of_this_host_are_released_at_start_up(db: Database) -> None:
    """After a crash the restarted daemon frees its predecessor's claims at once, not after the lease; claims of live
    processes, of other hosts and of named workers (no pid) wait for their lease."""
    t0 = utcnow()
    uids = ready_studies(db, 5, t0)
    owners = ["ward:4242/w0", "ward:4243/w0", "radiology2:4242/w0", "night-shift/w0", f"ward:{os.getpid()}/w0"]
    for owner in owners:
        assert queue.claim(db, owner, lease_seconds=120, now=t0) is not None
    claimed = {state_of(db, uid).claimed_by: uid for uid in uids}
    released = leases.release_orphans(db, policy=POLICY, host="ward", alive=lambda pid: pid == 4243, now=t0)
    # 4242 is gone; this process's own pid belongs to a predecessor (this process has claimed nothing yet)
    assert sorted(released) == sorted([claimed["ward:4242/w0"], claimed[f"ward:{os.getpid()}/w0"]])
    for uid in released:
        study = state_of(db, uid)
        assert study.claimed_by is None and study.attempts == 1 and "released at start-up" in (study.reason or "")
    kept = {owner for owner, uid in claimed.items() if uid not in released}
    assert kept == {"ward:4243/w0", "radiology2:4242/w0", "night-shift/w0"}
    assert all(state_of(db, claimed[o]).claimed_by == o for o in kept)


def test_failures_back_off_then_end_failed_with_the_reason(db: Database) -> None:
    t0 = utcnow()
    (uid,) = ready_studies(db, 1, t0)
    now = t0
    for attempt in range(1, POLICY.max_attempts + 1):
        c = queue.claim(db, "w", lease_seconds=60, now=now)
        assert c is not None, f"attempt {attempt} not claimable"
        state = queue.fail(db, c, "decoder crashed", policy=POLICY, now=now)
        if attempt < POLICY.max_attempts:
            assert state == StudyState.READY
            assert queue.claim(db, "w", lease_seconds=60, now=now + POLICY.delay(attempt) / 2) is None
            now = now + POLICY.delay(attempt)
    study = state_of(db, uid)
    assert study.state == StudyState.FAILED
    assert study.reason is not None and "decoder crashed" in study.reason and "3 attempts" in study.reason
    assert study.attempts == POLICY.max_attempts  # `queue ls` shows how many attempts a failed study had


def test_permanent_failure_ends_at_once(db: Database) -> None:
    (uid,) = ready_studies(db, 1, utcnow())
    c = queue.claim(db, "w", lease_seconds=60)
    assert c is not None
    assert queue.fail(db, c, "no pixel data", policy=POLICY, permanent=True) == StudyState.FAILED
    assert state_of(db, uid).reason == "no pixel data"


def test_late_instance_opens_a_new_run_and_every_move_is_an_event(db: Database) -> None:
    t0 = utcnow()
    (uid,) = ready_studies(db, 1, t0)
    for to in (StudyState.CLASSIFIED, StudyState.REPORTED, StudyState.DONE):
        c = queue.claim(db, "w", lease_seconds=60, now=t0)
        assert c is not None
        queue.finish(db, c, to, now=t0)
    arrivals.note_instance(db, stored(uid), now=t0 + timedelta(seconds=1))
    study = state_of(db, uid)
    assert (study.state, study.run_no) == (StudyState.RECEIVING, 2)
    with db.transaction() as s:
        moves = [
            (e.from_state, e.to_state, e.run_no)
            for e in s.scalars(
                select(StudyEvent)
                .where(StudyEvent.study_id == study.id, StudyEvent.kind == StudyEventKind.TRANSITION)
                .order_by(StudyEvent.id)
            )
        ]
    assert moves == [
        (None, "receiving", 1),
        ("receiving", "ready", 1),
        ("ready", "classified", 1),
        ("classified", "reported", 1),
        ("reported", "done", 1),
        ("done", "receiving", 2),
    ]


def test_a_run_that_fails_while_an_instance_arrives_reopens_with_it(db: Database) -> None:
    t0 = utcnow()
    (uid,) = ready_studies(db, 1, t0)
    c = queue.claim(db, "w", lease_seconds=60, now=t0)
    assert c is not None
    records.start_run(db, c, now=t0)  # the run takes the instance it was made of
    arrivals.note_instance(db, stored(uid), now=t0)  # one more arrives while the run works
    assert queue.fail(db, c, "no pixel data", policy=POLICY, permanent=True, now=t0) == StudyState.RECEIVING
    study = state_of(db, uid)
    assert (study.state, study.run_no) == (StudyState.RECEIVING, 2)  # not left failed with the image unread


def test_operator_retry_and_cancel(db: Database) -> None:
    (uid,) = ready_studies(db, 1, utcnow())
    with pytest.raises(IllegalTransition):
        queue.retry(db, uid)  # still waiting: nothing to retry
    c = queue.claim(db, "w", lease_seconds=60)
    assert c is not None
    queue.cancel(db, uid)
    with pytest.raises(queue.LeaseLost):
        queue.finish(db, c, StudyState.CLASSIFIED)  # the worker holding it writes nothing
    assert queue.retry(db, uid) == 2
    assert state_of(db, uid).state == StudyState.READY
    with pytest.raises(queue.UnknownStudy):
        queue.cancel(db, "1.2.3.4")
