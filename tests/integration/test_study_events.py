"""A study's history on real SQLite and PostgreSQL: claims, retries, deferrals, reaps and wake-ups are events, and
heartbeats are not; migration 0005 makes every older event a transition."""

from __future__ import annotations

from datetime import datetime, timedelta

from alembic import command
from sqlalchemy import select, text

from predictd.daemon import leases, lifecycle, queue, views
from predictd.daemon.db import Database, utcnow
from predictd.daemon.lifecycle import StudyEventKind, StudyState
from predictd.daemon.tables import Study, StudyEvent
from tests.integration.queue_helpers import ready_studies

POLICY = queue.RetryPolicy(max_attempts=3, base_seconds=10, cap_seconds=25)
K, S = StudyEventKind, StudyState


def history(db: Database, study_uid: str) -> list[tuple[str, str, str | None, str | None, datetime | None]]:
    """(kind, state after, actor, reason, due_at) of each event after the study became ready."""
    with db.transaction() as s:
        study_id = s.scalar(select(Study.id).where(Study.study_uid == study_uid))
        events = s.scalars(select(StudyEvent).where(StudyEvent.study_id == study_id).order_by(StudyEvent.id)).all()
        rows = [(e.kind, e.to_state, e.actor, e.reason, e.due_at) for e in events]
    assert rows[:2] == [(K.TRANSITION, S.RECEIVING, None, None, None), (K.TRANSITION, S.READY, "sweep", None, None)]
    return rows[2:]


def study(db: Database, study_uid: str) -> Study:
    with db.transaction() as s:
        row = s.scalar(select(Study).where(Study.study_uid == study_uid))
        assert row is not None
        return row


def test_claim_heartbeat_fail_and_defer_leave_their_events(db: Database) -> None:
    t0 = utcnow()
    (uid,) = ready_studies(db, 1, t0)
    c = queue.claim(db, "w1", lease_seconds=60, now=t0)
    assert c is not None
    for beat in range(1, 4):
        queue.heartbeat(db, c, lease_seconds=60, now=t0 + timedelta(seconds=20 * beat))
    assert study(db, uid).lease_until == t0 + timedelta(seconds=120)  # extended, and no event for it
    assert queue.fail(db, c, "decoder crashed", policy=POLICY, now=t0) == S.READY
    retry_at = t0 + POLICY.delay(1)
    c = queue.claim(db, "w2", lease_seconds=60, now=retry_at)
    assert c is not None
    queue.finish(db, c, S.CLASSIFIED, now=retry_at)
    c = queue.claim(db, "w2", lease_seconds=60, now=retry_at)
    assert c is not None
    queue.finish(db, c, S.REPORTED, now=retry_at)
    c = queue.claim(db, "w2", lease_seconds=60, now=retry_at)
    assert c is not None
    until = retry_at + timedelta(minutes=5)
    queue.defer(db, c, until, now=retry_at)
    assert history(db, uid) == [
        (K.CLAIMED, S.READY, "w1", None, None),
        (K.RETRY_SCHEDULED, S.READY, "w1", "attempt 1 failed: decoder crashed", retry_at),
        (K.CLAIMED, S.READY, "w2", None, None),
        (K.TRANSITION, S.CLASSIFIED, "w2", None, None),
        (K.CLAIMED, S.CLASSIFIED, "w2", None, None),
        (K.TRANSITION, S.REPORTED, "w2", None, None),
        (K.CLAIMED, S.REPORTED, "w2", None, None),
        (K.DEFERRED, S.REPORTED, "w2", None, until),
    ]
    row = study(db, uid)
    assert (row.claimed_by, row.lease_until, row.next_attempt_at) == (None, None, until)


def test_the_last_failure_is_a_transition_to_failed(db: Database) -> None:
    t0 = utcnow()
    (uid,) = ready_studies(db, 1, t0)
    c = queue.claim(db, "w", lease_seconds=60, now=t0)
    assert c is not None
    queue.fail(db, c, "no pixel data", policy=POLICY, permanent=True, now=t0)
    assert history(db, uid) == [
        (K.CLAIMED, S.READY, "w", None, None),
        (K.TRANSITION, S.FAILED, "w", "no pixel data", None),
    ]
    assert study(db, uid).attempts == 1


def test_the_reaper_and_the_start_up_release_leave_their_events(db: Database) -> None:
    t0 = utcnow()
    reaped, orphaned = ready_studies(db, 2, t0)
    assert queue.claim(db, "hung", lease_seconds=5, now=t0) is not None
    assert queue.claim(db, "ward:4242/w0", lease_seconds=600, now=t0) is not None
    later = t0 + timedelta(seconds=6)
    assert leases.reap(db, policy=POLICY, now=later) == [reaped]
    gone = leases.release_orphans(db, policy=POLICY, host="ward", alive=lambda pid: False, now=later)
    assert gone == [orphaned]
    retry_at = later + POLICY.delay(1)
    assert history(db, reaped) == [
        (K.CLAIMED, S.READY, "hung", None, None),
        (K.REAPED, S.READY, "reaper", "lease of hung expired", None),
        (K.RETRY_SCHEDULED, S.READY, "reaper", "attempt 1 failed: lease of hung expired", retry_at),
    ]
    why = "claim of ward:4242/w0 released at start-up: that process is gone"
    assert history(db, orphaned) == [
        (K.CLAIMED, S.READY, "ward:4242/w0", None, None),
        (K.RELEASED, S.READY, "startup", why, None),
        (K.RETRY_SCHEDULED, S.READY, "startup", f"attempt 1 failed: {why}", retry_at),
    ]


def test_cancelling_a_claimed_study_is_one_transition_that_ends_the_claim(db: Database) -> None:
    (uid,) = ready_studies(db, 1, utcnow())
    assert queue.claim(db, "w", lease_seconds=60) is not None
    queue.cancel(db, uid)
    assert [(kind, state) for kind, state, *_ in history(db, uid)] == [
        (K.CLAIMED, S.READY),
        (K.TRANSITION, S.CANCELLED),
    ]
    assert study(db, uid).claimed_by is None


def test_wake_makes_waiting_studies_due_now_with_an_event(db: Database) -> None:
    t0 = utcnow()
    waiting, due = ready_studies(db, 2, t0)
    for _ in range(2):
        c = queue.claim(db, "w", lease_seconds=60, now=t0)
        assert c is not None
        queue.defer(db, c, t0 + timedelta(hours=1) if c.study_uid == waiting else t0, now=t0)
    later = t0 + timedelta(seconds=30)
    ids = [study(db, uid).id for uid in (waiting, due)]
    with db.transaction() as s:
        assert lifecycle.wake(s, ids, now=later, reason="destination pacs answered") == 1  # the other is due already
    assert history(db, waiting)[-1] == (K.WOKEN, S.READY, "probe", "destination pacs answered", later)
    assert history(db, due)[-1][0] == K.DEFERRED
    assert study(db, waiting).next_attempt_at == later


def test_queue_show_reads_the_history_as_sentences(db: Database) -> None:
    t0 = utcnow()
    (uid,) = ready_studies(db, 1, t0)
    assert queue.claim(db, "hung", lease_seconds=5, now=t0) is not None
    leases.reap(db, policy=POLICY, now=t0 + timedelta(seconds=6))
    detail = views.study_detail(db, uid)
    assert detail is not None
    retry_at = (t0 + timedelta(seconds=6) + POLICY.delay(1)).isoformat()
    assert [(e["kind"], e["event"], e["due_at"]) for e in detail["events"]] == [
        ("transition", "(new) → receiving", None),
        ("transition", "receiving → ready", None),
        ("claimed", "claimed by hung for classify", None),
        ("reaped", "lease expired, reaped", None),
        ("retry_scheduled", f"retry scheduled at {retry_at}", retry_at),
    ]


def test_migration_0005_makes_earlier_events_transitions(empty_db: Database) -> None:
    db = empty_db
    db.upgrade("0004")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO studies (id, study_uid, state, run_no, first_instance_at, last_instance_at, attempts,"
                " updated_at) VALUES (1, '1.2.3', 'ready', 1, :t, :t, 0, :t)"
            ),
            {"t": datetime(2026, 11, 22, 12, 0)},
        )
        conn.execute(
            text(
                "INSERT INTO study_events (study_id, run_no, from_state, to_state, at) VALUES"
                " (1, 1, NULL, 'receiving', :t), (1, 1, 'receiving', 'ready', :t)"
            ),
            {"t": datetime(2026, 11, 22, 12, 0)},
        )
    db.upgrade()
    detail = views.study_detail(db, "1.2.3")
    assert detail is not None
    assert [(e["kind"], e["event"], e["due_at"]) for e in detail["events"]] == [
        ("transition", "(new) → receiving", None),
        ("transition", "receiving → ready", None),
    ]
    assert queue.claim(db, "w", lease_seconds=60) is not None  # a new kind is written beside them
    command.downgrade(db.alembic_config(), "0004")  # and the way back drops what 0004 cannot hold
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM study_events")).scalar() == 2
