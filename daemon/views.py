"""Read views for operators (the CLI's `queue ls` and `queue show`): studies, their runs, events and deliveries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from predictd.daemon.db import Database, utcnow
from predictd.daemon.lifecycle import WORK, StudyEventKind, StudyState
from predictd.daemon.tables import Delivery, Instance, PredictionRow, Run, Study, StudyEvent


@dataclass(frozen=True)
class StudyFilter:
    """How a PACS administrator asks for studies: by state, accession, patient, modality, time received (UTC)."""

    state: str | None = None
    accession_number: str | None = None
    patient_id: str | None = None
    modality: str | None = None
    since: datetime | None = None
    """Received (first instance) at or after."""
    until: datetime | None = None
    """Received before."""

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        conditions = {
            Study.state: self.state,
            Study.accession_number: self.accession_number,
            Study.patient_id: self.patient_id,
            Study.modality: self.modality.upper() if self.modality else None,
        }
        for column, value in conditions.items():
            if value:
                stmt = stmt.where(column == value)
        if self.since is not None:
            stmt = stmt.where(Study.first_instance_at >= self.since)
        if self.until is not None:
            stmt = stmt.where(Study.first_instance_at < self.until)
        return stmt


def list_studies(
    db: Database,
    *,
    state: str | None = None,
    limit: int = 100,
    where: StudyFilter | None = None,
    identifiers: bool = False,
) -> list[dict[str, Any]]:
    """Studies, most recently changed first; with ``identifiers`` each row also holds the accession number, patient
    ID and study date, for the CLI's own user who asked for them (never for a log)."""
    where = where or StudyFilter(state=state)
    with db.transaction() as s:
        stmt = where.apply(select(Study).order_by(Study.updated_at.desc(), Study.id.desc()).limit(limit))
        studies = s.scalars(stmt).all()
        counts = dict(
            s.execute(
                select(Instance.study_id, func.count())
                .where(Instance.study_id.in_([st.id for st in studies]))
                .group_by(Instance.study_id)
            ).all()
        )
        return [
            _study_dict(st, int(counts.get(st.id, 0))) | (_identifiers(st) if identifiers else {}) for st in studies
        ]


def _study_dict(st: Study, n_instances: int) -> dict[str, Any]:
    return {
        "study_uid": st.study_uid,
        "state": st.state,
        "run_no": st.run_no,
        "modality": st.modality,
        "calling_ae": st.calling_ae,
        "instances": n_instances,
        "attempts": st.attempts,
        "claimed_by": st.claimed_by,
        "next_attempt_at": _iso(st.next_attempt_at),
        "updated_at": _iso(st.updated_at),
        "received_at": _iso(st.first_instance_at),
        "reason": st.reason,
    }


def _identifiers(st: Study) -> dict[str, Any]:
    return {"accession_number": st.accession_number, "patient_id": st.patient_id, "study_date": st.study_date}


def study_detail(db: Database, study_uid: str) -> dict[str, Any] | None:
    """Everything an operator asks about one study: instances, history, predictions, SR, deliveries."""
    with db.transaction() as s:
        st = s.scalar(select(Study).where(Study.study_uid == study_uid))
        if st is None:
            return None
        instances = s.scalars(select(Instance).where(Instance.study_id == st.id).order_by(Instance.id)).all()
        events = s.scalars(select(StudyEvent).where(StudyEvent.study_id == st.id).order_by(StudyEvent.id)).all()
        runs = s.scalars(select(Run).where(Run.study_id == st.id).order_by(Run.run_no)).all()
        detail = _study_dict(st, len(instances))
        detail["instances_detail"] = [
            {
                "sop_instance_uid": i.sop_instance_uid,
                "series_uid": i.series_uid,
                "sop_class_uid": i.sop_class_uid,
                "transfer_syntax_uid": i.transfer_syntax_uid,
                "size_bytes": i.size_bytes,
                "run_no": i.run_no,
                "received_at": _iso(i.received_at),
            }
            for i in instances
        ]
        detail["events"] = [_event_dict(e) for e in events]
        detail["runs"] = [_run_dict(s, r) for r in runs]
        return detail


def _event_dict(e: StudyEvent) -> dict[str, Any]:
    return {
        "at": _iso(e.at),
        "run_no": e.run_no,
        "kind": e.kind,
        "event": describe_event(e.kind, e.from_state, e.to_state, actor=e.actor, due_at=e.due_at),
        "from": e.from_state,
        "to": e.to_state,
        "actor": e.actor,
        "reason": e.reason,
        "due_at": _iso(e.due_at),
    }


def describe_event(
    kind: str, from_state: str | None, to_state: str, *, actor: str | None, due_at: datetime | None
) -> str:
    """One line of a study's history as ``queue show`` prints it (the reason goes beside it)."""
    due = _iso(due_at) or "?"
    match kind:
        case StudyEventKind.TRANSITION:
            return f"{from_state or '(new)'} → {to_state}"
        case StudyEventKind.CLAIMED:
            return f"claimed by {actor} for {WORK.get(StudyState(to_state), to_state)}"
        case StudyEventKind.DEFERRED:
            return f"deferred until {due}"
        case StudyEventKind.RETRY_SCHEDULED:
            return f"retry scheduled at {due}"
        case StudyEventKind.REAPED:
            return "lease expired, reaped"
        case StudyEventKind.RELEASED:
            return "claim released at start-up"
        case StudyEventKind.WOKEN:
            return "due now"
        case StudyEventKind.SENDER_DONE:
            return f"sender released its association: complete at {due}"
    return kind


def _run_dict(s: Session, r: Run) -> dict[str, Any]:
    preds = s.scalars(select(PredictionRow).where(PredictionRow.run_id == r.id).order_by(PredictionRow.id)).all()
    dels = s.scalars(select(Delivery).where(Delivery.run_id == r.id).order_by(Delivery.id)).all()
    return {
        "run_no": r.run_no,
        "started_at": _iso(r.started_at),
        "classified_at": _iso(r.classified_at),
        "model_versions": r.model_versions,
        "sr_sop_instance_uid": r.sr_sop_instance_uid,
        "report_text": r.report_text,
        "predictions": [
            {
                "sop_instance_uid": p.sop_instance_uid,
                "model": f"{p.model_name}@{p.model_version}",
                "task": p.task,
                "label": p.label,
                "probability": round(p.probability, 4),
                "laterality": p.laterality,
            }
            for p in preds
        ],
        "deliveries": [
            {
                "destination": d.destination,
                "kind": d.kind,
                "state": d.state,
                "attempts": d.attempts,
                "sent_at": _iso(d.sent_at),
                "next_attempt_at": _iso(d.next_attempt_at),
                "last_error": d.last_error,
            }
            for d in dels
        ],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- the queue in numbers (`predictd queue stats`) ---------------------------------------------------------------


def counts_by_state(db: Database) -> dict[str, int]:
    with db.transaction() as s:
        rows = s.execute(select(Study.state, func.count()).group_by(Study.state)).all()
    return {str(state): int(n) for state, n in rows}


def delivery_counts(db: Database) -> dict[str, int]:
    with db.transaction() as s:
        rows = s.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
    return {str(state): int(n) for state, n in rows}


def deliveries_by_destination(db: Database) -> dict[tuple[str, str], int]:
    """Outbox rows per (destination, state), for the metrics."""
    with db.transaction() as s:
        rows = s.execute(
            select(Delivery.destination, Delivery.state, func.count()).group_by(Delivery.destination, Delivery.state)
        ).all()
    return {(str(dest), str(state)): int(n) for dest, state, n in rows}


def oldest_waiting_seconds(
    db: Database, now: datetime | None = None, states: list[StudyState] | None = None
) -> float | None:
    """Age of the oldest study waiting in a claimable state, or in ``states`` (how far behind the workers are)."""
    now = now or utcnow()
    waiting = [str(x) for x in (states if states is not None else WORK)]
    with db.transaction() as s:
        oldest = s.scalar(select(func.min(Study.updated_at)).where(Study.state.in_(waiting)))
    return None if oldest is None else (now - (oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC))).total_seconds()
