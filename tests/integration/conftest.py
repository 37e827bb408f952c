"""Real databases for the integration tier: a fresh SQLite file and a fresh PostgreSQL database per test.

PostgreSQL comes from PREDICTD_TEST_POSTGRES_URL (default: postgres on 127.0.0.1:5432, trust auth). Each test gets
its own database, created empty and dropped afterwards, so migrations always start from nothing. Where no server
answers the PostgreSQL cases are skipped, except under CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from predictd.daemon.db import Database
from tests.integration.receivers import start_receiver  # noqa: F401  (a fixture of the receiver tests)

POSTGRES_URL = os.environ.get(
    "PREDICTD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/predictd_test"
)


def _admin_url() -> str:
    return make_url(POSTGRES_URL).set(database="postgres").render_as_string(hide_password=False)


def _postgres_available() -> str | None:
    try:
        engine = create_engine(_admin_url())
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except OperationalError as exc:
        return str(exc).splitlines()[0]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a brand-new, empty PostgreSQL database, dropped after the test."""
    problem = _postgres_available()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {problem}")
        pytest.skip(f"PostgreSQL not reachable: {problem}")
    name = f"predictd_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'predictd.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """An empty database (no schema) on each backend."""
    url = request.getfixturevalue(f"{request.param}_url")
    db = Database(url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def db(empty_db: Database) -> Database:
    """A database at head, on each backend."""
    empty_db.upgrade()
    return empty_db
