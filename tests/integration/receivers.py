"""A real receiver per call (real socket, SQLite at head, a spool), for the receiver's integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from predictd.daemon import arrivals
from predictd.daemon.config import ReceiveSettings
from predictd.daemon.db import Database
from predictd.daemon.listeners import Receiver
from predictd.daemon.spool import Spool
from predictd.daemon.tables import Instance, Study
from tests.support import free_port

CALLING = "MODALITY"
CALLED = "PREDICTD"


@dataclass
class Running:
    receiver: Receiver
    db: Database
    spool: Spool

    @property
    def port(self) -> int:
        return self.receiver.port

    def instances(self) -> list[Instance]:
        with self.db.transaction() as s:
            return list(s.scalars(select(Instance)).all())

    def study(self, study_uid: str) -> Study | None:
        with self.db.transaction() as s:
            return s.scalar(select(Study).where(Study.study_uid == study_uid))

    def spooled_files(self) -> list[Path]:
        return sorted(p for p in (self.spool.root / "instances").rglob("*") if p.is_file())


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start receivers (real socket, real SQLite at head, real spool); every one is stopped after the test."""
    running: list[Running] = []

    def start(*, release_grace: float | None = None, **overrides: Any) -> Running:
        """``release_grace``: tell the queue when a released association completed a study (as serve does)."""
        n = len(running)
        db = Database(f"sqlite:///{tmp_path}/q{n}.db")
        db.upgrade()
        spool = Spool(tmp_path / f"spool{n}")
        fields: dict[str, Any] = {
            "ae_title": CALLED,
            "host": "127.0.0.1",
            "port": free_port(),
            "allowed_calling_aets": [CALLING],
            "min_free_bytes": 0,
            "network_timeout_seconds": 10,
        }
        fields.update(overrides)
        done = None
        if release_grace is not None:

            def done(uids: list[str], calling: str, grace: float = release_grace) -> None:
                arrivals.sender_done(db, uids, grace_seconds=grace, actor=f"release by {calling}")

        receiver = Receiver(
            ReceiveSettings(**fields), spool, record=lambda inst: arrivals.note_instance(db, inst), sender_done=done
        )
        run = Running(receiver, db, spool)
        running.append(run)
        receiver.start()
        return run

    try:
        yield start
    finally:
        for run in running:
            run.receiver.stop()
            run.db.dispose()
