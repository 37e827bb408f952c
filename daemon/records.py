"""What the stages write besides a study's state: runs, predictions, outbox rows; and the read views of them.

Kept apart from queue.py (claims and states) so each module has one job. Every write checks that the caller still
holds its claim, in the same transaction, so a worker whose lease was reaped can never overwrite a newer result.
Writes are idempotent: a stage retried after a crash replaces what its earlier attempt left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from daemon.db import Database, utcnow
from daemon.lifecycle import TERMINAL
from daemon.queue import Claim, RetryPolicy, held
from daemon.tables import Delivery, Instance, PredictionRow, Run, Study, StudyEvent
from models.prediction import Prediction

PENDING, SENT, FAILED = "pending", "sent", "failed"


@dataclass(frozen=True)
class InstanceRef:
    sop_instance_uid: str
    series_uid: str
    path: Path


@dataclass(frozen=True)
class RunView:
    run_id: int
    study_uid: str
    run_no: int
    instances: list[InstanceRef]
    predictions: list[Prediction]
    model_versions: str | None
    sr_sop_instance_uid: str | None
    sr_path: Path | None
    report_text: str | None
    classified_at: datetime | None = None
    predecessor_sr_uid: str | None = None
    """SOP Instance UID of the SR of the latest earlier run that built one: the new SR's predecessor document."""
    not_assessed_reason: str | None = None
    """Why no model applied to the study: the run has no predictions and reports "not assessed"."""


@dataclass(frozen=True)
class Document:
    """One file a run sends: the SR, a key image (Secondary Capture) or an HL7 message."""

    kind: str
    """"sr", "key_image" or "hl7" (see tables.Delivery.kind)."""
    sop_instance_uid: str
    """The DICOM object's UID; for an HL7 message, a UID derived from the SR's, so retries dedupe the same way."""
    path: Path
    destination: str | None = None
    """Only for this destination (an HL7 message names its receiver in MSH-5/6); None: every one of its kind."""


SR, KEY_IMAGE, HL7 = "sr", "key_image", "hl7"


@dataclass(frozen=True)
class DeliveryView:
    id: int
    destination: str
    sop_instance_uid: str
    path: Path
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    kind: str = SR


@dataclass(frozen=True)
class DeliverySummary:
    pending: int
    failed: list[DeliveryView]
    next_attempt_at: datetime | None
    """Earliest retry among pending deliveries (None when all are due now or none is pending)."""


def _run_row(s: Session, study_id: int, run_no: int) -> Run:
    run = s.scalar(select(Run).where(Run.study_id == study_id, Run.run_no == run_no))
    if run is None:
        raise LookupError(f"no run {run_no} for study id {study_id}")
    return run


def start_run(db: Database, c: Claim, *, now: datetime | None = None) -> RunView:
    """Open (or reopen) the claim's run; it covers every instance of the study, late ones included.

    Instances not yet taken by a run are marked with this run, so an instance arriving later reopens the study.
    """
    now = now or utcnow()
    with db.transaction() as s:
        held(db, s, c)
        run = s.scalar(select(Run).where(Run.study_id == c.study_id, Run.run_no == c.run_no))
        if run is None:
            run = Run(study_id=c.study_id, run_no=c.run_no, started_at=now)
            s.add(run)
        for inst in s.scalars(select(Instance).where(Instance.study_id == c.study_id, Instance.run_no.is_(None))):
            inst.run_no = c.run_no
        s.flush()
        return _view(s, run, c.study_uid)


def save_predictions(
    db: Database,
    c: Claim,
    predictions: list[Prediction],
    model_versions: str,
    *,
    now: datetime | None = None,
    not_assessed_reason: str | None = None,
) -> None:
    """Replace the run's predictions (a retried classification leaves exactly one set).

    ``not_assessed_reason``: no model applied (``predictions`` is then empty); the report stage says so.
    """
    now = now or utcnow()
    with db.transaction() as s:
        held(db, s, c)
        run = _run_row(s, c.study_id, c.run_no)
        s.execute(delete(PredictionRow).where(PredictionRow.run_id == run.id))
        s.add_all(
            PredictionRow(
                run_id=run.id,
                sop_instance_uid=p.sop_instance_uid,
                model_name=p.model_name,
                model_version=p.model_version,
                task=p.task,
                label=p.label,
                probability=p.probability,
                laterality=p.laterality,
                detail=p.to_dict(),
            )
            for p in predictions
        )
        run.model_versions = model_versions
        run.classified_at = now
        run.not_assessed_reason = not_assessed_reason


def load_run(db: Database, study_id: int, run_no: int) -> RunView:
    with db.transaction() as s:
        study = s.get(Study, study_id)
        if study is None:
            raise LookupError(f"no study id {study_id}")
        return _view(s, _run_row(s, study_id, run_no), study.study_uid)


def _view(s: Session, run: Run, study_uid: str) -> RunView:
    instances = s.scalars(
        select(Instance)
        .where(
            Instance.study_id == run.study_id,
            Instance.run_no.is_not(None),
            Instance.run_no <= run.run_no,
            Instance.purged_at.is_(None),
        )
        .order_by(Instance.series_uid, Instance.id)
    ).all()
    predictions = s.scalars(
        select(PredictionRow).where(PredictionRow.run_id == run.id).order_by(PredictionRow.id)
    ).all()
    predecessor = s.scalar(
        select(Run.sr_sop_instance_uid)
        .where(Run.study_id == run.study_id, Run.run_no < run.run_no, Run.sr_sop_instance_uid.is_not(None))
        .order_by(Run.run_no.desc())
        .limit(1)
    )
    return RunView(
        run_id=run.id,
        study_uid=study_uid,
        run_no=run.run_no,
        instances=[InstanceRef(i.sop_instance_uid, i.series_uid, Path(i.path)) for i in instances],
        predictions=[Prediction.from_dict(dict(p.detail)) for p in predictions],
        model_versions=run.model_versions,
        sr_sop_instance_uid=run.sr_sop_instance_uid,
        sr_path=Path(run.sr_path) if run.sr_path else None,
        report_text=run.report_text,
        classified_at=run.classified_at,
        predecessor_sr_uid=predecessor,
        not_assessed_reason=run.not_assessed_reason,
    )


def save_report(
    db: Database,
    c: Claim,
    *,
    sr_sop_instance_uid: str,
    sr_path: Path,
    report_text: str,
    deliveries: Sequence[tuple[str, Document]],
) -> None:
    """Record the built SR and queue one outbox row per (destination, document); existing rows are kept."""
    with db.transaction() as s:
        held(db, s, c)
        run = _run_row(s, c.study_id, c.run_no)
        run.sr_sop_instance_uid = sr_sop_instance_uid
        run.sr_path = str(sr_path)
        run.report_text = report_text
        uids = {doc.sop_instance_uid for _, doc in deliveries}
        existing = set(
            s.execute(
                select(Delivery.destination, Delivery.sop_instance_uid).where(Delivery.sop_instance_uid.in_(uids))
            ).all()
        )
        s.add_all(
            Delivery(
                run_id=run.id,
                destination=name,
                sop_instance_uid=doc.sop_instance_uid,
                path=str(doc.path),
                kind=doc.kind,
                state=PENDING,
                attempts=0,
                created_at=utcnow(),
            )
            for name, doc in deliveries
            if (name, doc.sop_instance_uid) not in existing
        )


def deliveries(db: Database, run_id: int) -> list[DeliveryView]:
    with db.transaction() as s:
        rows = s.scalars(select(Delivery).where(Delivery.run_id == run_id).order_by(Delivery.id)).all()
        return [_delivery_view(d) for d in rows]


def _delivery_view(d: Delivery) -> DeliveryView:
    return DeliveryView(
        d.id,
        d.destination,
        d.sop_instance_uid,
        Path(d.path),
        d.state,
        d.attempts,
        d.next_attempt_at,
        d.last_error,
        d.kind,
    )


def mark_sent(db: Database, delivery_id: int, *, now: datetime | None = None) -> None:
    with db.transaction() as s:
        d = s.get(Delivery, delivery_id)
        if d is not None:
            d.state = SENT
            d.attempts += 1
            d.sent_at = now or utcnow()
            d.last_error = None
            d.next_attempt_at = None


def mark_attempt_failed(
    db: Database,
    delivery_id: int,
    error: str,
    *,
    policy: RetryPolicy,
    permanent: bool = False,
    give_up_after: timedelta | None = None,
    now: datetime | None = None,
) -> str:
    """Count a failed delivery attempt; returns the delivery's new state (pending with backoff, or failed).

    A retryable failure gives up only when the row is older than ``give_up_after`` (or, with ``policy.max_attempts``
    above 0, after that many attempts): a long PACS outage must not lose results.
    """
    now = now or utcnow()
    with db.transaction() as s:
        d = s.get(Delivery, delivery_id)
        if d is None:
            raise LookupError(f"no delivery {delivery_id}")
        d.attempts += 1
        d.last_error = error
        too_old = give_up_after is not None and d.created_at is not None and now - d.created_at >= give_up_after
        too_many = 0 < policy.max_attempts <= d.attempts
        if permanent or too_old or too_many:
            d.state = FAILED
            d.next_attempt_at = None
        else:
            d.next_attempt_at = now + policy.delay(d.attempts)
        return d.state


def summarize(views: list[DeliveryView], now: datetime) -> DeliverySummary:
    pending = [v for v in views if v.state == PENDING]
    waits = [v.next_attempt_at for v in pending if v.next_attempt_at is not None and v.next_attempt_at > now]
    return DeliverySummary(
        pending=len(pending),
        failed=[v for v in views if v.state == FAILED],
        next_attempt_at=min(waits) if len(waits) == len(pending) and waits else None,
    )


# --- read views for operators (the CLI) ---------------------------------------------------------------------------


def list_studies(db: Database, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    with db.transaction() as s:
        stmt = select(Study).order_by(Study.updated_at.desc(), Study.id.desc()).limit(limit)
        if state:
            stmt = stmt.where(Study.state == state)
        studies = s.scalars(stmt).all()
        counts = dict(
            s.execute(
                select(Instance.study_id, func.count())
                .where(Instance.study_id.in_([st.id for st in studies]))
                .group_by(Instance.study_id)
            ).all()
        )
        return [_study_dict(st, int(counts.get(st.id, 0))) for st in studies]


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
        "reason": st.reason,
    }


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
        detail["events"] = [
            {
                "at": _iso(e.at),
                "run_no": e.run_no,
                "from": e.from_state,
                "to": e.to_state,
                "actor": e.actor,
                "reason": e.reason,
            }
            for e in events
        ]
        detail["runs"] = [_run_dict(s, r) for r in runs]
        return detail


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


@dataclass(frozen=True)
class PurgeBatch:
    """What retention may delete of one ended study: these instance files and the documents of these runs."""

    study_uid: str
    instance_ids: list[int]
    instance_paths: list[Path]
    run_nos: list[int]


def purgeable(db: Database, cutoff: datetime, *, limit: int = 500) -> list[PurgeBatch]:
    """Studies that ended (done, skipped, cancelled, failed) before ``cutoff`` and still have files on disk.

    The files are named one by one, from the rows, so an instance that arrives for the study while the purge runs
    (written to the same folder, its row not yet committed or newer than the list) is never deleted with them.
    """
    with db.transaction() as s:
        studies = s.execute(
            select(Study.id, Study.study_uid, Study.run_no)
            .where(
                Study.state.in_([str(t) for t in TERMINAL]),
                Study.updated_at < cutoff,
                select(Instance.id).where(Instance.study_id == Study.id, Instance.purged_at.is_(None)).exists(),
            )
            .order_by(Study.updated_at)
            .limit(limit)
        ).all()
        batches = []
        for study_id, study_uid, run_no in studies:
            rows = s.execute(
                select(Instance.id, Instance.path).where(
                    Instance.study_id == study_id, Instance.purged_at.is_(None), Instance.received_at < cutoff
                )
            ).all()
            batches.append(
                PurgeBatch(study_uid, [r.id for r in rows], [Path(r.path) for r in rows], list(range(1, run_no + 1)))
            )
        return batches


def mark_purged(db: Database, instance_ids: Sequence[int], *, now: datetime | None = None) -> None:
    """Record that these instances' files are gone, so later runs leave them out instead of failing on them."""
    if not instance_ids:
        return
    with db.transaction() as s:
        s.execute(update(Instance).where(Instance.id.in_(list(instance_ids))).values(purged_at=now or utcnow()))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


__all__ = [
    "DeliverySummary",
    "DeliveryView",
    "InstanceRef",
    "PurgeBatch",
    "RunView",
    "deliveries",
    "list_studies",
    "load_run",
    "mark_attempt_failed",
    "mark_purged",
    "mark_sent",
    "purgeable",
    "save_predictions",
    "save_report",
    "start_run",
    "study_detail",
    "summarize",
]
