"""What retention may delete: ended studies' files named row by row, and the record that they are gone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update

from predictd.daemon.db import Database, utcnow
from predictd.daemon.lifecycle import TERMINAL
from predictd.daemon.tables import Instance, Study


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
