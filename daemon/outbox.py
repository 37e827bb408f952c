"""The outbox: which destination gets which document (routing), one row per (destination, document) of a run, the
delivery states and document kinds (``DeliveryState``, ``DocumentKind``), and the writes of the send stage.

Also the queries across destinations for :mod:`daemon.health` (which destinations deliveries wait for, making them
due at once), so the probing module holds no SQL. The rows are created with the run's report
(:func:`daemon.records.save_report`, one transaction). Like the run writes of :mod:`daemon.records`, every delivery
write checks in its transaction that the caller still holds the study's claim, so a sender whose lease was reaped
cannot overwrite what the study's new owner recorded (the document is resent with the same UID: idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from predictd.daemon import lifecycle
from predictd.daemon.config_send import Destination
from predictd.daemon.db import Database, utcnow
from predictd.daemon.queue import Claim, RetryPolicy, held
from predictd.daemon.tables import Delivery, Run


class DeliveryState(StrEnum):
    """A delivery's state (tables.Delivery.state); the values are the strings stored and shown (``queue show``)."""

    PENDING = "pending"
    """Not delivered yet: due now, or waiting out its backoff (``next_attempt_at``)."""
    SENT = "sent"
    FAILED = "failed"
    """Given up: a permanent error, or too old (``send.give_up_after_hours``) or too many attempts."""


class DocumentKind(StrEnum):
    """What a delivery's file is (tables.Delivery.kind); the values are the strings stored."""

    SR = "sr"
    """The Comprehensive SR."""
    KEY_IMAGE = "key_image"
    """A Grad-CAM key image (Secondary Capture)."""
    HL7 = "hl7"
    """An HL7 ORU^R01 message, built for one HL7 destination."""


OUTBOX_FOLDER = "outbox-folder"
"""Destination name used when no destination is configured: documents are written to ``send.outbox_dir``."""
DICOM_KINDS = frozenset({DocumentKind.SR, DocumentKind.KEY_IMAGE})
"""What a DICOM destination (C-STORE or STOW-RS) and the outbox folder receive; an HL7 destination gets the message."""


@dataclass(frozen=True)
class Document:
    """One file a run sends: the SR, a key image (Secondary Capture) or an HL7 message."""

    kind: DocumentKind
    sop_instance_uid: str
    """The DICOM object's UID; for an HL7 message, a UID derived from the SR's, so retries dedupe the same way."""
    path: Path
    destination: str | None = None
    """Only for this destination (an HL7 message names its receiver in MSH-5/6); None: every one of its kind."""


def routes(destinations: Sequence[Destination]) -> list[tuple[str, frozenset[DocumentKind]]]:
    """Each destination's name and the document kinds it receives; the outbox folder when none is configured."""
    hl7 = frozenset({DocumentKind.HL7})
    configured = [(d.name, hl7 if d.type == "hl7" else DICOM_KINDS) for d in destinations]
    return configured or [(OUTBOX_FOLDER, DICOM_KINDS)]


def routed(destinations: Sequence[Destination], documents: Sequence[Document]) -> list[tuple[str, Document]]:
    """Every (destination, document) pair to queue, key images before the SR that references them.

    A document addressed to one destination (an HL7 message, built for its receiver) goes there only.
    """
    order = {DocumentKind.KEY_IMAGE: 0, DocumentKind.SR: 1, DocumentKind.HL7: 2}
    ordered = sorted(documents, key=lambda doc: order[doc.kind])
    return [
        (name, doc)
        for name, kinds in routes(destinations)
        for doc in ordered
        if doc.kind in kinds and doc.destination in (None, name)
    ]


@dataclass(frozen=True)
class DeliveryView:
    id: int
    destination: str
    sop_instance_uid: str
    path: Path
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    kind: DocumentKind = DocumentKind.SR


@dataclass(frozen=True)
class DeliverySummary:
    pending: int
    failed: list[DeliveryView]
    next_attempt_at: datetime | None
    """Earliest retry among pending deliveries (None when all are due now or none is pending)."""


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
        DeliveryState(d.state),
        d.attempts,
        d.next_attempt_at,
        d.last_error,
        DocumentKind(d.kind),
    )


def mark_sent(db: Database, claim: Claim, delivery_id: int, *, now: datetime | None = None) -> None:
    """Record a delivered document; LeaseLost (nothing written) when ``claim`` is no longer held."""
    with db.transaction() as s:
        d = _claimed_delivery(db, s, claim, delivery_id)
        d.state = DeliveryState.SENT
        d.attempts += 1
        d.sent_at = now or utcnow()
        d.last_error = None
        d.next_attempt_at = None


def mark_attempt_failed(
    db: Database,
    claim: Claim,
    delivery_id: int,
    error: str,
    *,
    policy: RetryPolicy,
    permanent: bool = False,
    give_up_after: timedelta | None = None,
    now: datetime | None = None,
) -> DeliveryState:
    """Count a failed delivery attempt; returns the delivery's new state (pending with backoff, or failed).

    A retryable failure gives up only when the row is older than ``give_up_after`` (or, with ``policy.max_attempts``
    above 0, after that many attempts): a long PACS outage must not lose results. LeaseLost (nothing written) when
    ``claim`` is no longer held.
    """
    now = now or utcnow()
    with db.transaction() as s:
        d = _claimed_delivery(db, s, claim, delivery_id)
        d.attempts += 1
        d.last_error = error
        too_old = give_up_after is not None and d.created_at is not None and now - d.created_at >= give_up_after
        too_many = 0 < policy.max_attempts <= d.attempts
        if permanent or too_old or too_many:
            d.state = DeliveryState.FAILED
            d.next_attempt_at = None
        else:
            d.next_attempt_at = now + policy.delay(d.attempts)
        return DeliveryState(d.state)


def _claimed_delivery(db: Database, s: Session, claim: Claim, delivery_id: int) -> Delivery:
    """The delivery, if it belongs to the claim's run and the claim is still held (the study row locked)."""
    held(db, s, claim)
    d = s.get(Delivery, delivery_id)
    run = s.get(Run, d.run_id) if d is not None else None
    if d is None or run is None or (run.study_id, run.run_no) != (claim.study_id, claim.run_no):
        raise LookupError(f"no delivery {delivery_id} in run {claim.run_no} of study {claim.study_uid}")
    return d


def summarize(views: list[DeliveryView], now: datetime) -> DeliverySummary:
    pending = [v for v in views if v.state == DeliveryState.PENDING]
    waits = [v.next_attempt_at for v in pending if v.next_attempt_at is not None and v.next_attempt_at > now]
    return DeliverySummary(
        pending=len(pending),
        failed=[v for v in views if v.state == DeliveryState.FAILED],
        next_attempt_at=min(waits) if len(waits) == len(pending) and waits else None,
    )


def waiting_destinations(db: Database, now: datetime) -> list[str]:
    """Destinations with pending deliveries that failed before and wait out a backoff."""
    with db.transaction() as s:
        names = s.scalars(
            select(Delivery.destination)
            .where(Delivery.state == DeliveryState.PENDING, Delivery.attempts > 0, Delivery.next_attempt_at > now)
            .distinct()
        ).all()
    return sorted(names)


def flush(db: Database, destination: str, now: datetime) -> int:
    """Make ``destination``'s waiting deliveries, and their studies, due now; returns how many deliveries."""
    with db.transaction() as s:
        waiting = (Delivery.destination == destination) & (Delivery.state == DeliveryState.PENDING)
        run_ids = select(Delivery.run_id).where(waiting)
        study_ids = select(Run.study_id).where(Run.id.in_(run_ids))
        lifecycle.wake(s, study_ids, now=now, reason=f"destination {destination} answered")
        result = s.execute(update(Delivery).where(waiting, Delivery.next_attempt_at > now).values(next_attempt_at=now))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
