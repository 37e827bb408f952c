"""Migrations take an empty database to head, and head matches the tables the code declares."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from predictd.daemon.db import SCHEMA_HEAD, Database, DatabaseNotAtHead
from predictd.daemon.tables import Base


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
