"""SQLAlchemy 2.0 tables: studies, instances, runs, predictions, outbox, study_events, audit_events.

A study row carries its state ("last stage completed") and, while a worker holds it, a claim (claimed_by,
lease_until). Each processing of a study is a run; instances that arrive after a run open the next one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive; PostgreSQL as timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    run_no: Mapped[int] = mapped_column(Integer, default=1)
    modality: Mapped[str | None] = mapped_column(String(16))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    first_instance_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_instance_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sender_done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the association that brought the study's instances was released (and no other open one had brought
    any): the study is complete after ``queue.release_grace_seconds``. Cleared by the next instance."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    """Patient ID of the first instance: the registry export's "one row per patient". PHI: never logged."""
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    """DICOM DA (YYYYMMDD) as received, exported as the study date (the registry filters on classified_at)."""

    __table_args__ = (Index("ix_studies_state_next_attempt", "state", "next_attempt_at"),)


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    run_no: Mapped[int | None] = mapped_column(Integer)
    """The run that classified this instance; NULL until a run takes it."""
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When retention deleted the file; a later run (late images) classifies only the instances still on disk."""


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    run_no: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    classified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    model_versions: Mapped[str | None] = mapped_column(Text)
    """"name@version,..." of the models that ran, part of the SR's deterministic UID."""
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    sr_path: Mapped[str | None] = mapped_column(Text)
    report_text: Mapped[str | None] = mapped_column(Text)
    not_assessed_reason: Mapped[str | None] = mapped_column(Text)
    """Why no model applied to the study (the cascade's reason); set when a "not assessed" SR is to be sent."""
    cards: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    """The model cards (``ModelCard.to_dict``) the run was classified with: what its report is worded from."""

    __table_args__ = (UniqueConstraint("study_id", "run_no", name="uq_runs_study_id_run_no"),)


class PredictionRow(Base):
    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    laterality: Mapped[str | None] = mapped_column(String(1))
    detail: Mapped[dict[str, object]] = mapped_column(JSON)
    """The whole Prediction as a dict (all class probabilities, flags)."""


class Delivery(Base):
    """One outbox row: one document to one destination."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16), default="sr", server_default="sr")
    """What the file is: "sr" (the Structured Report), "key_image" (a Secondary Capture) or "hl7" (an ORU message)."""
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the row was queued: a delivery gives up ``send.give_up_after_hours`` after it (migration 0004)."""

    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination", name="uq_outbox_sop_instance_uid_destination"),
    )


class StudyEvent(Base):
    """One entry of a study's history, written only by daemon.lifecycle."""

    __tablename__ = "study_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    run_no: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), default="transition", server_default="transition")
    """What happened (lifecycle.StudyEventKind): a state move, or a claim taken, given back, reaped, a retry ...
    (migration 0005; earlier rows are all transitions)."""
    from_state: Mapped[str | None] = mapped_column(String(16))
    """The state before the event (None for a study's creation); equal to ``to_state`` for all but transitions."""
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the study is due again: a deferral's or a scheduled retry's time (migration 0005)."""


class AuditEvent(Base):
    """One record of the audit trail (daemon.audit): who did what, when, from where. Append-only: triggers refuse
    UPDATE and DELETE (migration 0008), and no foreign key ties it to rows the retention purge may delete."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    """audit.AuditKind: association, instance_received, document_sent, operator_action, config_loaded ..."""
    outcome: Mapped[str] = mapped_column(String(16))
    """success, refused (a policy said no) or failed (an error)."""
    actor: Mapped[str] = mapped_column(String(128))
    """Who: the calling AE title (and TLS certificate name) for DICOM, the OS user for an operator command."""
    peer: Mapped[str | None] = mapped_column(String(128))
    """Where from or to: the caller's address, or the destination's name."""
    study_uid: Mapped[str | None] = mapped_column(UID, index=True)
    source: Mapped[str] = mapped_column(String(128))
    """The predictd process that wrote it (host:pid)."""
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    """UIDs, reasons, TLS, hashes: never a patient's name, ID, birth date or accession number."""


def table(model: type[Base]) -> Table:
    """The Core table of a model, for statements built once on the hot paths (without the ORM's bulk machinery)."""
    return cast(Table, model.__table__)
