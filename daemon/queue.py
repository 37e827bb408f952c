"""Stage 3, the queue: claims with leases, failures with backoff, operators' retry and cancel.

Instances are recorded, and studies made ready, in daemon.arrivals.

Every function here is one short transaction. A claim is a lease (claimed_by, lease_until) on a study whose state is
claimable; the worker heartbeats while it works, and daemon.leases frees studies whose lease ran out or whose process
is gone (a crashed worker), counting that as a failed attempt so a study that kills workers ends ``failed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from predictd.daemon import lifecycle
from predictd.daemon.db import Database, utcnow
from predictd.daemon.lifecycle import TERMINAL, StudyState
from predictd.daemon.tables import Instance, Study

S = StudyState


class LeaseLost(RuntimeError):
    """The worker's claim expired or was taken away (reaped, cancelled); its result must not be written."""


class UnknownStudy(LookupError):
    pass


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one study for one stage."""

    study_id: int
    study_uid: str
    state: StudyState
    run_no: int
    attempts: int
    worker: str


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    cap_seconds: float

    def delay(self, attempts: int) -> timedelta:
        """Exponential backoff after the n-th failed attempt (1-based), capped."""
        exponent = min(max(0, attempts - 1), 40)  # unlimited attempts (deliveries give up by age) must not overflow
        return timedelta(seconds=min(self.cap_seconds, self.base_seconds * 2**exponent))


# --- claiming ----------------------------------------------------------------------------------------------------


def claim(
    db: Database,
    worker: str,
    *,
    lease_seconds: float,
    states: Sequence[StudyState] = tuple(lifecycle.WORK),
    now: datetime | None = None,
) -> Claim | None:
    """Take the oldest due study in one of ``states``, or None. Exactly one worker gets each study."""
    now = now or utcnow()
    with db.transaction() as s:
        study = s.scalar(
            db.locking(
                select(Study)
                .where(
                    Study.state.in_([str(st) for st in states]),
                    Study.claimed_by.is_(None),
                    (Study.next_attempt_at.is_(None)) | (Study.next_attempt_at <= now),
                )
                .order_by(Study.last_instance_at, Study.id)
                .limit(1)
            )
        )
        if study is None:
            return None
        lifecycle.claim(s, study, worker, lease_until=now + timedelta(seconds=lease_seconds), now=now)
        return Claim(study.id, study.study_uid, StudyState(study.state), study.run_no, study.attempts, worker)


def next_due(
    db: Database, *, states: Sequence[StudyState] = tuple(lifecycle.WORK), now: datetime | None = None
) -> datetime | None:
    """When the next unclaimed study waiting for a retry or a delivery becomes due (None: none waits).

    An idle worker waits until then at most: a time coming due is the one change nobody notifies (daemon.wakeup).
    """
    now = now or utcnow()
    with db.transaction() as s:
        due = s.scalar(
            select(func.min(Study.next_attempt_at)).where(
                Study.state.in_([str(st) for st in states]),
                Study.claimed_by.is_(None),
                Study.next_attempt_at > now,
            )
        )
    return None if due is None else _aware(due)


def heartbeat(db: Database, c: Claim, *, lease_seconds: float, now: datetime | None = None) -> None:
    """Extend the lease (no event: see lifecycle.extend_lease); raises LeaseLost if the claim is no longer ours."""
    now = now or utcnow()
    lease_until = now + timedelta(seconds=lease_seconds)
    with db.transaction() as s:
        if not lifecycle.extend_lease(s, c.study_id, worker=c.worker, state=str(c.state), lease_until=lease_until):
            raise LeaseLost(f"study {c.study_uid}: lease lost")


def held(db: Database, s: Session, c: Claim) -> Study:
    """The claimed study, locked, if the claim is still ours; else LeaseLost. Call inside a transaction."""
    study = s.scalar(db.locking(select(Study).where(Study.id == c.study_id)))
    if study is None or study.claimed_by != c.worker or study.state != c.state or study.run_no != c.run_no:
        raise LeaseLost(f"study {c.study_uid}: claim no longer held by {c.worker}")
    return study


def finish(
    db: Database, c: Claim, to: StudyState, *, reason: str | None = None, now: datetime | None = None
) -> StudyState:
    """Record a completed stage, which releases the claim; returns the state the study ends in.

    When a run ends and instances arrived during it, the study reopens at once as the next run.
    """
    now = now or utcnow()
    with db.transaction() as s:
        study = held(db, s, c)
        lifecycle.transition(s, study, to, now=now, actor=c.worker, reason=reason)
        _reopen_if_instances_arrived(s, study, now, c.worker)
        return StudyState(study.state)


def defer(db: Database, c: Claim, until: datetime, *, now: datetime | None = None) -> None:
    """Release the claim without changing state or counting a failure (e.g. deliveries still waiting)."""
    now = now or utcnow()
    with db.transaction() as s:
        lifecycle.defer(s, held(db, s, c), until, now=now, actor=c.worker)


def fail(
    db: Database,
    c: Claim,
    reason: str,
    *,
    policy: RetryPolicy,
    permanent: bool = False,
    now: datetime | None = None,
) -> StudyState:
    """Count a failed attempt: retry later with backoff, or end ``failed`` with the reason kept."""
    now = now or utcnow()
    with db.transaction() as s:
        return count_failure(s, held(db, s, c), reason, policy, permanent, now, actor=c.worker)


def count_failure(
    s: Session, study: Study, reason: str, policy: RetryPolicy, permanent: bool, now: datetime, actor: str
) -> StudyState:
    """Count a failed attempt (the claim, if any, is released): a retry after the backoff, or, when permanent or the
    last allowed, the study ends ``failed`` (and reopens at once if instances arrived during its run)."""
    attempt = study.attempts + 1
    if permanent or attempt >= policy.max_attempts:
        why = reason if permanent else f"{reason} (after {attempt} attempts)"
        lifecycle.give_up(s, study, why, now=now, actor=actor)
        if _run_took_instances(s, study.id, study.run_no):  # else it failed before reading any: no loop
            _reopen_if_instances_arrived(s, study, now, actor)
        return StudyState(study.state)
    lifecycle.schedule_retry(s, study, reason, retry_at=now + policy.delay(attempt), now=now, actor=actor)
    return StudyState(study.state)


def _reopen_if_instances_arrived(s: Session, study: Study, now: datetime, actor: str) -> None:
    """A run that ended (done, skipped or failed) while instances arrived reopens at once as the next run with them."""
    if StudyState(study.state) in TERMINAL and _has_unprocessed_instances(s, study.id):
        reason = "instances arrived during the run"
        lifecycle.transition(s, study, S.RECEIVING, now=now, actor=actor, reason=reason, new_run=True)


def _run_took_instances(s: Session, study_id: int, run_no: int) -> bool:
    taken = select(Instance.id).where(Instance.study_id == study_id, Instance.run_no == run_no).limit(1)
    return s.scalar(taken) is not None


def _has_unprocessed_instances(s: Session, study_id: int) -> bool:
    unprocessed = select(Instance.id).where(Instance.study_id == study_id, Instance.run_no.is_(None)).limit(1)
    return s.scalar(unprocessed) is not None


# --- operators ---------------------------------------------------------------------------------------------------


def _study_by_uid(s: Session, db: Database, study_uid: str) -> Study:
    study = s.scalar(db.locking(select(Study).where(Study.study_uid == study_uid)))
    if study is None:
        raise UnknownStudy(study_uid)
    return study


def retry(db: Database, study_uid: str, *, actor: str = "operator", now: datetime | None = None) -> int:
    """Run an ended study again from classification, as a new run; returns the new run number."""
    now = now or utcnow()
    with db.transaction() as s:
        study = _study_by_uid(s, db, study_uid)
        if StudyState(study.state) not in TERMINAL:
            raise lifecycle.IllegalTransition(
                f"study {study_uid} is {study.state}; only done, failed, skipped or cancelled studies can be retried"
            )
        lifecycle.transition(s, study, S.READY, now=now, actor=actor, reason="retry requested", new_run=True)
        return study.run_no


def cancel(db: Database, study_uid: str, *, actor: str = "operator", now: datetime | None = None) -> None:
    """Stop a study wherever it is; a worker holding it loses its claim and writes nothing."""
    now = now or utcnow()
    with db.transaction() as s:
        study = _study_by_uid(s, db, study_uid)
        lifecycle.transition(s, study, S.CANCELLED, now=now, actor=actor, reason="cancelled by operator")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


__all__ = [
    "Claim",
    "LeaseLost",
    "RetryPolicy",
    "UnknownStudy",
    "cancel",
    "claim",
    "count_failure",
    "defer",
    "fail",
    "finish",
    "heartbeat",
    "held",
    "retry",
]
