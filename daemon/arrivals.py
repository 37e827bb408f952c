"""Stage 3a, arrivals: recording the instances the receiver stored, and deciding when a study is complete.

Called from the receiver's association threads, once per instance, before the C-STORE is answered: the common case
(a further instance of an open study) is three prepared Core statements; a new study, or one that must change state
(an ended study reopening, a ready one going back to receiving), takes the ORM path through daemon.lifecycle with
its events. A study is complete after its quiet window, or a short grace after the association that brought it was
released (daemon.completion); :func:`sweep_ready` makes it ready for the workers (daemon.queue).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import bindparam, insert, or_, select
from sqlalchemy.exc import IntegrityError

from predictd.daemon import audit, lifecycle
from predictd.daemon.audit import Auditor, AuditRecord
from predictd.daemon.db import Database, utcnow
from predictd.daemon.lifecycle import StudyState
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


def note_instance(
    db: Database, inst: IncomingInstance, *, now: datetime | None = None, auditor: Auditor | None = None
) -> bool:
    """Record a durably stored instance; True if new, False for a repeated SOP Instance UID (idempotent).

    A study that already ended reopens as a new run; a ready study not yet claimed goes back to receiving, so its
    quiet period starts again. With an ``auditor`` the instance's audit record is written in the same transaction.
    """
    now = now or utcnow()
    for attempt in range(3):
        try:
            new = _note_instance_once(db, inst, now, auditor)
        except IntegrityError:
            # Two associations created the same study (or instance) at once on PostgreSQL: the retry sees it.
            if attempt == 2:
                raise
            continue
        if auditor is not None:
            auditor.forward(_audit_record(inst, new, now))
        return new
    raise AssertionError("unreachable")


def _audit_record(inst: IncomingInstance, new: bool, now: datetime) -> AuditRecord:
    return audit.instance_received(
        inst.calling_ae, inst.study_uid, inst.series_uid, inst.sop_instance_uid, inst.sop_class_uid, new=new, at=now
    )


def _note_instance_once(db: Database, inst: IncomingInstance, now: datetime, auditor: Auditor | None) -> bool:
    known = _note_instance_of_open_study(db, inst, now, auditor)
    if known is not None:
        return known
    with db.transaction() as s:
        if s.scalar(select(Instance.id).where(Instance.sop_instance_uid == inst.sop_instance_uid)) is not None:
            if auditor is not None:
                auditor.insert(s, _audit_record(inst, False, now))
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
        if auditor is not None:
            auditor.insert(s, _audit_record(inst, True, now))
    return True


def _note_instance_of_open_study(
    db: Database, inst: IncomingInstance, now: datetime, auditor: Auditor | None
) -> bool | None:
    """The common case (a further instance of a study that takes it without changing state) in Core statements:
    True if recorded, False for a repeated instance, None when the study is new or must change state (the caller's
    ORM path then does it, with its events)."""
    with db.connection() as conn:
        if conn.execute(_INSTANCE_BY_UID, {"uid": inst.sop_instance_uid}).first():
            if auditor is not None:
                auditor.insert(conn, _audit_record(inst, False, now))
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
        if auditor is not None:
            auditor.insert(conn, _audit_record(inst, True, now))
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
