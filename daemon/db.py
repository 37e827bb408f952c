"""Engine and sessions. Every SQLite/PostgreSQL difference lives here and only here.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade: a claim is serialised by the write lock.
PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` (see :meth:`Database.locking`), so several workers on several hosts
share one queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Select, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from predictd.daemon.wakeup import WorkAvailable, marked

if TYPE_CHECKING:  # Alembic costs 0.4 s to import: only `db upgrade` and the schema tests need it
    from alembic.config import Config

SCHEMA_HEAD = "0008"
"""The migration this code was written for. Checked against Alembic's own head by a test (they cannot drift), so
every command can check the schema with one query instead of importing Alembic and reading every migration."""

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class DatabaseNotAtHead(RuntimeError):
    """The schema is older (or newer) than this code; the message names the fixing command."""


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (None for another database or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def masked_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for printing."""
    return make_url(url).render_as_string(hide_password=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Database:
    """One engine per process, and short transactions on it."""

    def __init__(self, url: str, *, sqlite_busy_timeout_ms: int = 30_000) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                url,
                connect_args={"timeout": sqlite_busy_timeout_ms / 1000, "check_same_thread": False},
                hide_parameters=True,  # an error's text must not quote the row's values (patient IDs, accessions)
            )
            _configure_sqlite(self.engine, sqlite_busy_timeout_ms)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, hide_parameters=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.work_available = WorkAvailable()
        """Notified after each commit that made work available (daemon.wakeup): the workers wait on it."""

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error. Keep it short."""
        with self._sessions() as session:
            with session.begin():
                yield session
            if marked(session):  # committed: the work is visible now
                self.work_available.notify()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A Core connection in one transaction, without an ORM session: for the receiver's per-instance rows, where
        the session's unit of work was most of the cost. Wakes nobody (recording an instance makes no work)."""
        with self.engine.begin() as conn:
            yield conn

    def locking(self, stmt: Select[Any]) -> Select[Any]:
        """Lock the selected rows for this transaction, skipping rows other workers hold (PostgreSQL).

        On SQLite the whole transaction already holds the write lock (BEGIN IMMEDIATE), so nothing is added.
        """
        if self.is_sqlite:
            return stmt
        return stmt.with_for_update(skip_locked=True)

    # --- schema ---------------------------------------------------------------------------------------------

    def alembic_config(self) -> Config:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        cfg.attributes["engine"] = self.engine
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        command.upgrade(self.alembic_config(), revision)

    def current_revision(self) -> str | None:
        """The revision Alembic recorded in the database (None: no schema yet), read with one query."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def head_revision(self) -> str | None:
        """Alembic's head, read from the migration scripts (what SCHEMA_HEAD must equal)."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def require_head(self) -> None:
        """Refuse to run on a schema this code was not written for."""
        current, head = self.current_revision(), SCHEMA_HEAD
        if current != head:
            raise DatabaseNotAtHead(
                f"database schema is at {current or 'nothing (empty database)'}, this predictd needs {head}; "
                "run `predictd db upgrade` (with the same --config) first"
            )

    def dispose(self) -> None:
        self.engine.dispose()


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so BEGIN IMMEDIATE is ours to issue.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged image's row survives power loss
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
