"""The study state machine: the only code that writes ``studies.state``.

A study's state is the last stage it completed; work in progress is a claim, not a state. Every move is checked
against one transition table and appends a ``study_events`` row in the same transaction.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy.orm import Session

from predictd.daemon.tables import Study, StudyEvent


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


S = StudyState

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
    session.add(StudyEvent(study_id=study.id, run_no=1, from_state=None, to_state=S.RECEIVING, at=now))
    return study


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

    ``new_run`` starts the next run of the study (late instances, or an operator's retry).
    """
    current = StudyState(study.state)
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(f"study {study.study_uid}: {current} -> {to} is not allowed")
    if new_run:
        study.run_no += 1
    study.state = to
    if to not in TERMINAL:
        study.attempts = 0
    study.next_attempt_at = None
    study.reason = reason if to in TERMINAL or reason else None
    study.updated_at = now
    session.add(
        StudyEvent(
            study_id=study.id,
            run_no=study.run_no,
            from_state=current,
            to_state=to,
            at=now,
            actor=actor,
            reason=reason,
        )
    )
