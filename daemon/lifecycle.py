"""The study state machine, and the only code that writes a ``studies`` row.

A study's state is the last stage it completed; work in progress is a claim, not a state. Every move is checked
against one transition table. Every write to a study row (a move, a claim taken, given back or taken away, a retry
scheduled) is one small function here that appends a typed ``study_events`` row in the same transaction, so
``predictd queue show`` tells the whole history. Two writes record no event, because they are frequent and their
own rows or logs tell them: a heartbeat extending a lease (:func:`extend_lease`) and an instance arriving
(:func:`instance_arrived`, or :func:`instance_arrived_row` on the receiver's Core path; the ``instances`` table has a
row per arrival).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Select, bindparam, case, func, update
from sqlalchemy.orm import Session

from predictd.daemon import wakeup
from predictd.daemon.log import Event, get_logger
from predictd.daemon.tables import Study, StudyEvent, UTCDateTime, table

log = get_logger("lifecycle")


class StudyState(StrEnum):
    RECEIVING = "receiving"
    """Instances are arriving; ready once none has come for quiet_seconds."""
    READY = "ready"
    CLASSIFIED = "classified"
    REPORTED = "reported"
    """Documents built and queued in the outbox; delivery in progress."""
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class StudyEventKind(StrEnum):
    """What a ``study_events`` row records (``study_events.kind``); the values are the strings stored.

    Only a transition changes the state; every other kind stores the state the study stays in as both ``from_state``
    and ``to_state`` (the state before and after the event).
    """

    TRANSITION = "transition"
    """The state moved (``from_state`` → ``to_state``), which also ends any claim (:func:`transition`)."""
    CLAIMED = "claimed"
    """A worker (the actor) took the study for its state's stage, under a lease."""
    DEFERRED = "deferred"
    """The worker gave the claim back with no failure counted; due again at ``due_at`` (deliveries waiting)."""
    RETRY_SCHEDULED = "retry_scheduled"
    """A failed attempt was counted; the claim is free and the study due again at ``due_at`` (backoff)."""
    REAPED = "reaped"
    """The reaper took away a claim whose lease expired (its worker died or hung)."""
    RELEASED = "released"
    """At start-up, the claim of a dead process of this host was freed without waiting out its lease."""
    WOKEN = "woken"
    """A destination the study's deliveries wait for answered again: the study is due now, not at ``due_at``."""
    SENDER_DONE = "sender_done"
    """The association that brought the study was released (no other open one had brought any of it): complete
    after the release grace (``due_at``), not after the quiet window."""


S = StudyState
K = StudyEventKind

TRANSITIONS: dict[StudyState, frozenset[StudyState]] = {
    S.RECEIVING: frozenset({S.READY, S.CANCELLED}),
    S.READY: frozenset({S.RECEIVING, S.CLASSIFIED, S.SKIPPED, S.FAILED, S.CANCELLED}),
    S.CLASSIFIED: frozenset({S.REPORTED, S.FAILED, S.CANCELLED}),
    S.REPORTED: frozenset({S.DONE, S.FAILED, S.CANCELLED}),
    # Terminal states reopen: late instances (a new run, receiving) or an operator's retry (a new run, ready).
    S.DONE: frozenset({S.RECEIVING, S.READY}),
    S.FAILED: frozenset({S.RECEIVING, S.READY}),
    S.SKIPPED: frozenset({S.RECEIVING, S.READY}),
    S.CANCELLED: frozenset({S.READY}),
}

TERMINAL = frozenset({S.DONE, S.FAILED, S.SKIPPED, S.CANCELLED})
"""States no worker acts on."""

WORK: dict[StudyState, str] = {S.READY: "classify", S.CLASSIFIED: "report", S.REPORTED: "send"}
"""Claimable states and the stage that moves each one on (the worker maps names to stage functions)."""


class IllegalTransition(RuntimeError):
    """A move the transition table does not allow: a bug or a race, never silently applied."""


# --- the study and its state ---------------------------------------------------------------------------------------


def create(session: Session, study_uid: str, *, now: datetime, modality: str | None, calling_ae: str | None) -> Study:
    """A new study, receiving, with its first event."""
    study = Study(
        study_uid=study_uid,
        state=S.RECEIVING,
        run_no=1,
        modality=modality,
        calling_ae=calling_ae,
        first_instance_at=now,
        last_instance_at=now,
        attempts=0,
        updated_at=now,
    )
    session.add(study)
    session.flush()
    session.add(
        StudyEvent(study_id=study.id, run_no=1, kind=K.TRANSITION, from_state=None, to_state=S.RECEIVING, at=now)
    )
    return study


def instance_arrived(
    study: Study,
    *,
    now: datetime,
    modality: str | None,
    patient_id: str | None,
    accession_number: str | None,
    study_date: str | None,
) -> None:
    """An instance of ``study`` was stored: its quiet period restarts, and identifying fields not yet known are taken
    from it. No event: the ``instances`` row is the record (and whether it reopens the study is a transition)."""
    study.last_instance_at = max(study.last_instance_at, now)
    study.sender_done_at = None  # more is coming, perhaps on another association: its release (or quiet) decides
    study.modality = study.modality or modality
    study.patient_id = study.patient_id or patient_id
    study.accession_number = study.accession_number or accession_number
    study.study_date = study.study_date or study_date


_STUDIES = table(Study).c
_INSTANCE_ARRIVED = (
    update(table(Study))
    .where(_STUDIES.id == bindparam("study_id"))
    .values(
        last_instance_at=case(
            (_STUDIES.last_instance_at < bindparam("at", type_=UTCDateTime()), bindparam("at")),
            else_=_STUDIES.last_instance_at,
        ),
        sender_done_at=None,
        **{
            column: func.coalesce(_STUDIES[column], bindparam(f"new_{column}"))
            for column in ("modality", "patient_id", "accession_number", "study_date")
        },
    )
)
"""Built once: constructing a statement costs more in SQLAlchemy than executing its cached compiled form."""


def instance_arrived_row(
    conn: Connection,
    study_id: int,
    *,
    now: datetime,
    modality: str | None,
    patient_id: str | None,
    accession_number: str | None,
    study_date: str | None,
) -> None:
    """:func:`instance_arrived` as one prepared UPDATE, for the receiver's per-instance path: no ORM object is
    loaded (the session's unit of work was ~1.5 ms of the ~2.7 ms an instance took to record, bench/ingest.py)."""
    conn.execute(
        _INSTANCE_ARRIVED,
        {
            "study_id": study_id,
            "at": now,
            "new_modality": modality,
            "new_patient_id": patient_id,
            "new_accession_number": accession_number,
            "new_study_date": study_date,
        },
    )


def transition(
    session: Session,
    study: Study,
    to: StudyState,
    *,
    now: datetime,
    actor: str | None = None,
    reason: str | None = None,
    new_run: bool = False,
) -> None:
    """Move ``study`` to ``to`` (checked), reset its attempt counter (kept on an end state, for the operator), and
    record the event.

    A move ends any claim: a claim holds one state of one run, so its holder's next write finds it gone
    (``queue.LeaseLost``). ``new_run`` starts the next run of the study (late instances, or an operator's retry),
    logged as ``study_reopened``.
    """
    current = StudyState(study.state)
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(f"study {study.study_uid}: {current} -> {to} is not allowed")
    if new_run:
        study.run_no += 1
    study.state = to
    if to is S.RECEIVING:
        study.sender_done_at = None  # a reopened study waits for its new instances' sender again
    if to not in TERMINAL:
        study.attempts = 0
    study.next_attempt_at = None
    study.reason = reason if to in TERMINAL or reason else None
    study.updated_at = now
    _drop_claim(study)
    session.add(_event(study, K.TRANSITION, now, actor=actor, reason=reason, from_state=current))
    if to in WORK:
        _work_available(session)
    if new_run:
        log.info(
            Event.STUDY_REOPENED,
            study_uid=study.study_uid,
            run_no=study.run_no,
            from_state=current,
            to_state=to,
            actor=actor,
            reason=reason,
        )


# --- claims --------------------------------------------------------------------------------------------------------


def claim(session: Session, study: Study, worker: str, *, lease_until: datetime, now: datetime) -> None:
    """``worker`` takes ``study`` (the caller found it due and unclaimed, locked) until ``lease_until``."""
    study.claimed_by = worker
    study.lease_until = lease_until
    session.add(_event(study, K.CLAIMED, now, actor=worker))


def extend_lease(session: Session, study_id: int, *, worker: str, state: str, lease_until: datetime) -> bool:
    """A heartbeat: move the lease of ``worker``'s claim on ``study_id`` (still in ``state``) to ``lease_until``;
    False when that claim is gone (reaped, cancelled, moved on).

    No event: a worker beats every ``queue.heartbeat_seconds`` while a stage runs, and the claim's event and the
    event that ends it already bound the interval; only ``studies.lease_until`` changes.
    """
    result = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.claimed_by == worker, Study.state == state)
        .values(lease_until=lease_until)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def defer(session: Session, study: Study, until: datetime, *, now: datetime, actor: str) -> None:
    """The claim's holder gives the study back, no failure counted, due again at ``until``."""
    _drop_claim(study)
    study.next_attempt_at = until
    session.add(_event(study, K.DEFERRED, now, actor=actor, due_at=until))


def schedule_retry(
    session: Session, study: Study, failure: str, *, retry_at: datetime, now: datetime, actor: str
) -> None:
    """Count a failed attempt of the study's stage and free the claim; due again at ``retry_at``.

    The study's reason (and the event's) becomes "attempt N failed: <failure>".
    """
    _drop_claim(study)
    study.attempts += 1
    study.next_attempt_at = retry_at
    study.reason = f"attempt {study.attempts} failed: {failure}"
    study.updated_at = now
    session.add(_event(study, K.RETRY_SCHEDULED, now, actor=actor, reason=study.reason, due_at=retry_at))


def give_up(session: Session, study: Study, reason: str, *, now: datetime, actor: str) -> None:
    """Count a failed attempt that is the last (permanent, or attempts used up): the study ends ``failed``."""
    study.attempts += 1
    transition(session, study, S.FAILED, now=now, actor=actor, reason=reason)


def reap(session: Session, study: Study, *, now: datetime, actor: str = "reaper") -> None:
    """Take away a claim whose lease expired; the caller counts the lost attempt (``queue.count_failure``)."""
    reason = f"lease of {study.claimed_by} expired"
    _drop_claim(study)
    session.add(_event(study, K.REAPED, now, actor=actor, reason=reason))


def release(session: Session, study: Study, reason: str, *, now: datetime, actor: str = "startup") -> None:
    """Free the claim of a process known to be gone (at start-up); the caller counts the lost attempt."""
    _drop_claim(study)
    session.add(_event(study, K.RELEASED, now, actor=actor, reason=reason))


def sender_done(session: Session, study: Study, *, now: datetime, ready_at: datetime, actor: str) -> None:
    """The association that brought ``study`` was released normally and no other open one had brought any of it:
    the sweep may call it complete at ``ready_at`` (the release grace), before its quiet window ends."""
    study.sender_done_at = now
    session.add(_event(study, K.SENDER_DONE, now, actor=actor, due_at=ready_at))


def wake(
    session: Session,
    study_ids: Select[Any] | Sequence[int],
    *,
    now: datetime,
    reason: str,
    actor: str = "probe",
) -> int:
    """Make those of ``study_ids`` that wait for a later ``next_attempt_at`` due now; returns how many."""
    woken = session.execute(
        update(Study)
        .where(Study.id.in_(study_ids), Study.next_attempt_at > now)
        .values(next_attempt_at=now)
        .returning(Study.id, Study.run_no, Study.state)
    ).all()
    if woken:
        _work_available(session)
    for study_id, run_no, state in woken:
        session.add(
            StudyEvent(
                study_id=study_id,
                run_no=run_no,
                kind=K.WOKEN,
                from_state=state,
                to_state=state,
                at=now,
                actor=actor,
                reason=reason,
                due_at=now,
            )
        )
    return len(woken)


def _work_available(session: Session) -> None:
    """The study is workable once this commits: wake the workers (daemon.wakeup), other processes' too."""
    wakeup.mark(session, postgres=session.get_bind().dialect.name == "postgresql")


def _drop_claim(study: Study) -> None:
    study.claimed_by = None
    study.lease_until = None


def _event(
    study: Study,
    kind: StudyEventKind,
    now: datetime,
    *,
    actor: str | None,
    reason: str | None = None,
    from_state: str | None = None,
    due_at: datetime | None = None,
) -> StudyEvent:
    """A ``study_events`` row for ``study`` as it is now; ``from_state`` defaults to its state (no move)."""
    return StudyEvent(
        study_id=study.id,
        run_no=study.run_no,
        kind=kind,
        from_state=study.state if kind is not K.TRANSITION else from_state,
        to_state=study.state,
        at=now,
        actor=actor,
        reason=reason,
        due_at=due_at,
    )
