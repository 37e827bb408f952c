"""What the stages write besides a study's state: runs, their predictions and report, and the run's outbox rows.

Kept apart from queue.py (claims and states) so each module has one job. Every write checks that the caller still
holds its claim, in the same transaction, so a worker whose lease was reaped can never overwrite a newer result.
Writes are idempotent: a stage retried after a crash replaces what its earlier attempt left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from predictd.daemon.db import Database, utcnow
from predictd.daemon.outbox import DeliveryState, Document
from predictd.daemon.queue import Claim, held
from predictd.daemon.tables import Delivery, Instance, PredictionRow, Run, Study
from predictd.models.card import ModelCard
from predictd.models.prediction import Prediction


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
    cards: dict[str, ModelCard] | None = None
    """The cards the run was classified with, by name; None for a run classified before they were kept."""


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
    cards: Sequence[ModelCard] = (),
) -> None:
    """Replace the run's predictions (a retried classification leaves exactly one set).

    ``not_assessed_reason``: no model applied (``predictions`` is then empty); the report stage says so.
    ``cards``: the engine's cards at classify time, kept on the run so that its report is worded from the models
    that made the predictions, whatever is installed when the report stage runs.
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
        run.cards = [card.to_dict() for card in cards]


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
        cards=None if run.cards is None else {c["name"]: ModelCard.from_dict(c) for c in run.cards},
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
                state=DeliveryState.PENDING,
                attempts=0,
                created_at=utcnow(),
            )
            for name, doc in deliveries
            if (name, doc.sop_instance_uid) not in existing
        )
