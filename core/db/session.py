"""Engines and units of work. The boundary (a route, a task, a CLI command) owns the transaction.

``Database.transaction()`` commits on success and only then runs the callbacks registered with
``after_commit`` — this is how "send after commit" is kept everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")
log = structlog.get_logger(__name__)

_AFTER_COMMIT = "inferq_after_commit"
# PostgreSQL's deadlock_detected and serialization_failure: the transaction may simply run again.
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
_SQLITE_BEGIN = "inferq_sqlite_begin"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the in-process worker write while the API or CLI reads the same file.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # pysqlite opens transactions lazily and its own way, so a savepoint could commit on release;
    # SQLAlchemy's documented fix: turn that off and emit BEGIN ourselves (see _sqlite_begin).
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Connection) -> None:
    # Writers BEGIN IMMEDIATE: taking the write lock up front means a read-then-write transaction
    # waits its turn instead of failing to upgrade its lock. Readers (Database.read) stay DEFERRED
    # so that, with WAL, they never wait for a writer.
    mode = connection.get_execution_options().get(_SQLITE_BEGIN, "IMMEDIATE")
    connection.exec_driver_sql(f"BEGIN {mode}")


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed (never if it rolls back)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions() as session:
            with session.begin():
                yield session
            callbacks: list[Callable[[], None]] = session.info.pop(_AFTER_COMMIT, [])
        for callback in callbacks:
            callback()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work: nothing is committed, and on SQLite it never blocks."""
        with self.sessions() as session:
            session.connection(execution_options={_SQLITE_BEGIN: "DEFERRED"})
            try:
                yield session
            finally:
                session.rollback()

    def dispose(self) -> None:
        self.engine.dispose()


def retry_transient(work: Callable[[], T], attempts: int = 3) -> T:
    """Run a whole unit of work again when the database aborted it for a transient reason
    (a deadlock, a serialization failure, SQLite's lock timeout). ``work`` must be idempotent."""
    for attempt in range(attempts):
        try:
            return work()
        except OperationalError as exc:
            if attempt == attempts - 1 or not _is_transient(exc):
                raise
            log.warning("transient_database_error", attempt=attempt + 1, error=str(exc.orig))
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def _is_transient(exc: OperationalError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate in _TRANSIENT_SQLSTATES or "database is locked" in str(exc.orig)
