"""The outbox's queries across destinations: which destinations deliveries wait for, and making them due at once.

The SQL of :mod:`daemon.health` lives here, so that the probing module holds no SQL (the import contracts keep SQL
in the storage modules). Per-delivery writes are still in :mod:`daemon.records`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from daemon import records
from daemon.db import Database
from daemon.tables import Delivery, Run, Study


def waiting_destinations(db: Database, now: datetime) -> list[str]:
    """Destinations with pending deliveries that failed before and wait out a backoff."""
    with db.transaction() as s:
        names = s.scalars(
            select(Delivery.destination)
            .where(Delivery.state == records.PENDING, Delivery.attempts > 0, Delivery.next_attempt_at > now)
            .distinct()
        ).all()
    return sorted(names)


def flush(db: Database, destination: str, now: datetime) -> int:
    """Make ``destination``'s waiting deliveries, and their studies, due now; returns how many deliveries."""
    with db.transaction() as s:
        waiting = (Delivery.destination == destination) & (Delivery.state == records.PENDING)
        run_ids = select(Delivery.run_id).where(waiting)
        study_ids = select(Run.study_id).where(Run.id.in_(run_ids))
        s.execute(update(Study).where(Study.id.in_(study_ids), Study.next_attempt_at > now).values(next_attempt_at=now))
        result = s.execute(update(Delivery).where(waiting, Delivery.next_attempt_at > now).values(next_attempt_at=now))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
