"""Stage 3, the queue: recording instances, readiness, claims with leases, failures with backoff, the reaper.

Every function here is one short transaction. A claim is a lease (claimed_by, lease_until) on a study whose state is
claimable; the worker heartbeats while it works, and daemon.leases frees studies whose lease ran out or whose process
is gone (a crashed worker), counting that as a failed attempt so a study that kills workers ends ``failed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import bindparam, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from predictd.daemon import lifecycle
from predictd.daemon.db import Database, utcnow
from predictd.daemon.lifecycle import TERMINAL, StudyState
from predictd.daemon.tables import Instance, Study, table

S = StudyState


class IncomingInstance(Protocol):
    """What the receiver knows of a stored instance (daemon.receive.StoredInstance)."""

    @property
    def study_uid(self) -> str: ...
    @property
    def series_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def transfer_syntax_uid(self) -> str: ...
    @property
    def modality(self) -> str | None: ...
    @property
    def path(self) -> object: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def calling_ae(self) -> str | None: ...
    @property
    def patient_id(self) -> str | None: ...
    @property
    def accession_number(self) -> str | None: ...
    @property
    def study_date(self) -> str | None: ...


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


# --- receiving ---------------------------------------------------------------------------------------------------


def note_instance(db: Database, inst: IncomingInstance, *, now: datetime | None = None) -> bool:
    """Record a durably stored instance; True if new, False for a repeated SOP Instance UID (idempotent).

    A study that already ended reopens as a new run; a ready study not yet claimed goes back to receiving, so its
    quiet period starts again.
    """
    for attempt in range(3):
        try:
            return _note_instance_once(db, inst, now or utcnow())
        except IntegrityError:
            # Two associations created the same study (or instance) at once on PostgreSQL: the retry sees it.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _note_instance_once(db: Database, inst: IncomingInstance, now: datetime) -> bool:
    known = _note_instance_of_open_study(db, inst, now)
    if known is not None:
        return known
    with db.transaction() as s:
        if s.scalar(select(Instance.id).where(Instance.sop_instance_uid == inst.sop_instance_uid)) is not None:
            return False
        study = s.scalar(select(Study).where(Study.study_uid == inst.study_uid))
        if study is None:
            study = lifecycle.create(s, inst.study_uid, now=now, modality=inst.modality, calling_ae=inst.calling_ae)
        else:
            state = StudyState(study.state)
            if state in (S.DONE, S.FAILED, S.SKIPPED):
                lifecycle.transition(
                    s, study, S.RECEIVING, now=now, reason="late instance opens a new run", new_run=True
                )
            elif state is S.READY and study.claimed_by is None:
                lifecycle.transition(s, study, S.RECEIVING, now=now, reason="instance arrived before claim")
        lifecycle.instance_arrived(
            study,
            now=now,
            modality=inst.modality,
            patient_id=inst.patient_id,
            accession_number=inst.accession_number,
            study_date=inst.study_date,
        )
        s.add(Instance(**_instance_row(inst, study.id, now)))
    return True


def _note_instance_of_open_study(db: Database, inst: IncomingInstance, now: datetime) -> bool | None:
    """The common case (a further instance of a study that takes it without changing state) in Core statements:
    True if recorded, False for a repeated instance, None when the study is new or must change state (the caller's
    ORM path then does it, with its events)."""
    with db.connection() as conn:
        if conn.execute(_INSTANCE_BY_UID, {"uid": inst.sop_instance_uid}).first():
            return False
        row = conn.execute(_OPEN_STUDY_BY_UID, {"uid": inst.study_uid}).first()
        if row is None or not _takes_instances_as_is(StudyState(row.state), row.claimed_by):
            return None
        lifecycle.instance_arrived_row(
            conn,
            row.id,
            now=now,
            modality=inst.modality,
            patient_id=inst.patient_id,
            accession_number=inst.accession_number,
            study_date=inst.study_date,
        )
        conn.execute(_INSERT_INSTANCE, _instance_row(inst, row.id, now))
    return True


# Built once (see lifecycle._INSTANCE_ARRIVED): on Table objects, so the ORM's bulk machinery stays out of it.
_INSTANCE_BY_UID = select(table(Instance).c.id).where(table(Instance).c.sop_instance_uid == bindparam("uid"))
_OPEN_STUDY_BY_UID = select(*table(Study).c["id", "state", "claimed_by"]).where(
    table(Study).c.study_uid == bindparam("uid")
)
_INSERT_INSTANCE = insert(table(Instance))


def _takes_instances_as_is(state: StudyState, claimed_by: str | None) -> bool:
    """False where an instance moves the study: an ended one reopens, a ready one nobody claimed goes back to
    receiving (both in the ORM path of :func:`_note_instance_once`)."""
    return state not in (S.DONE, S.FAILED, S.SKIPPED) and not (state is S.READY and claimed_by is None)


def _instance_row(inst: IncomingInstance, study_id: int, now: datetime) -> dict[str, object]:
    return {
        "study_id": study_id,
        "series_uid": inst.series_uid,
        "sop_instance_uid": inst.sop_instance_uid,
        "sop_class_uid": inst.sop_class_uid,
        "transfer_syntax_uid": inst.transfer_syntax_uid,
        "modality": inst.modality,
        "path": str(inst.path),
        "size_bytes": inst.size_bytes,
        "calling_ae": inst.calling_ae,
        "received_at": now,
    }


def sweep_ready(
    db: Database,
    *,
    quiet_seconds: float,
    by_modality: Mapping[str, float] | None = None,
    release_grace_seconds: float | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Move receiving studies that are complete to ready; returns their UIDs.

    Complete: quiet for the quiet window (per modality), or, with ``release_grace_seconds``, their sender released
    the association that brought them (:func:`sender_done`) at least that long ago and nothing arrived since.
    """
    now = now or utcnow()
    by_modality = by_modality or {}
    shortest = min([quiet_seconds, *by_modality.values()])
    quiet_enough = Study.last_instance_at <= now - timedelta(seconds=shortest)
    if release_grace_seconds is not None:
        released = Study.sender_done_at <= now - timedelta(seconds=release_grace_seconds)
        quiet_enough = or_(quiet_enough, released)
    ready: list[str] = []
    with db.transaction() as s:
        candidates = s.scalars(db.locking(select(Study).where(Study.state == S.RECEIVING, quiet_enough))).all()
        for study in candidates:
            quiet = by_modality.get(study.modality or "", quiet_seconds)
            reason = None
            if study.last_instance_at > now - timedelta(seconds=quiet):
                reason = "its sender released the association that brought it"
            lifecycle.transition(s, study, S.READY, now=now, actor="sweep", reason=reason)
            ready.append(study.study_uid)
    return ready


def sender_done(
    db: Database, study_uids: Sequence[str], *, grace_seconds: float, actor: str, now: datetime | None = None
) -> list[str]:
    """The association that brought these studies was released, and no other open one had brought any of them:
    each still receiving is complete after ``grace_seconds`` (the sweep moves it). Returns the UIDs marked."""
    now = now or utcnow()
    marked: list[str] = []
    with db.transaction() as s:
        rows = s.scalars(
            db.locking(select(Study).where(Study.study_uid.in_(study_uids), Study.state == S.RECEIVING))
        ).all()
        for study in rows:
            ready_at = now + timedelta(seconds=grace_seconds)
            lifecycle.sender_done(s, study, now=now, ready_at=ready_at, actor=actor)
            marked.append(study.study_uid)
    return marked


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
    "IncomingInstance",
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
    "note_instance",
    "retry",
    "sweep_ready",
]
