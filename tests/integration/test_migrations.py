"""Migrations take an empty database to head, and head matches the tables the code declares."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from predictd.daemon.db import SCHEMA_HEAD, Database, DatabaseNotAtHead
from predictd.daemon.tables import Base
from tests.integration.pipeline_helpers import context, copy_as_new_study, drain, receive_file
from tests.support import CR_JLSL


def test_empty_database_is_refused_with_the_fixing_command(empty_db: Database) -> None:
    with pytest.raises(DatabaseNotAtHead, match="predictd db upgrade"):
        empty_db.require_head()


def test_upgrade_reaches_head_and_matches_the_tables(empty_db: Database) -> None:
    empty_db.upgrade()
    assert empty_db.current_revision() == empty_db.head_revision() == SCHEMA_HEAD  # the constant cannot drift
    empty_db.require_head()
    tables = set(inspect(empty_db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    with empty_db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_twice_is_harmless(db: Database) -> None:
    db.upgrade()
    assert db.current_revision() == db.head_revision()


def test_downgrading_keeps_every_row(db: Database, tmp_path: Path) -> None:
    """Down to the first revision and up again: no study, instance, run, prediction, delivery or event is lost (a
    SQLite batch rebuild of a parent table with foreign keys on would cascade-delete its children)."""
    ctx = context(tmp_path, db)
    receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    drain(ctx)
    tables = ("studies", "instances", "runs", "predictions", "outbox", "study_events")

    def counts() -> dict[str, int]:
        with db.engine.connect() as conn:
            return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() or 0) for t in tables}

    before = counts()
    assert all(before.values()), before
    command.downgrade(db.alembic_config(), "0001")
    after = counts()
    assert after["study_events"] <= before["study_events"]  # 0005's downgrade drops the events that are not moves
    assert {t: n for t, n in after.items() if t != "study_events"} == {
        t: n for t, n in before.items() if t != "study_events"
    }
    db.upgrade()
    assert db.current_revision() == SCHEMA_HEAD
