"""Waking long-polls the moment a job finishes, instead of on their next status poll.

The transaction that finishes a job (settles, fails or cancels it) also runs ``pg_notify``.
PostgreSQL delivers a notification only when that transaction commits and drops it on rollback,
so nothing is announced before commit. Each API process holds one LISTEN connection and wakes
the requests waiting on that job. A notification is a hint, never the truth: a waiter still
reads the job's status, and keeps a slow poll in case a notification was missed (the listener
was reconnecting). SQLite (embedded mode) has no NOTIFY; there the long-poll polls as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

import structlog
from sqlalchemy import Text, cast, column, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = structlog.get_logger(__name__)

CHANNEL = "inferq_job_finished"
RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)


def announce_finished(session: Session, job_id: uuid.UUID) -> None:
    """Queue the notification in the caller's transaction; sent at its commit, if it commits."""
    announce_finished_many(session, [job_id])


def announce_finished_many(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """One notification per job, queued by one statement (a batch finishes many jobs)."""
    if job_ids and session.get_bind().dialect.name == "postgresql":
        ids = func.unnest(cast([str(job_id) for job_id in job_ids], ARRAY(Text)))
        session.execute(select(func.pg_notify(CHANNEL, column("id"))).select_from(ids.alias("id")))


class Watch:
    """One request's subscription to one job: set when the job is announced finished."""

    def __init__(self, source: FinishedJobs) -> None:
        self._source = source
        self._event = asyncio.Event()

    @property
    def live(self) -> bool:
        """False while the listener is down: announcements may be missed, so poll."""
        return self._source.listening

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Until the job is announced (True) or ``timeout`` seconds pass (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), max(timeout, 0.0))
        announced = self._event.is_set()
        self._event.clear()
        return announced


class FinishedJobs:
    """The LISTEN side, one per API process, run as a task on the app's event loop."""

    def __init__(self, database_url: str) -> None:
        self.conninfo = (
            make_url(database_url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        self.listening = False
        self._watches: dict[str, set[Watch]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="inferq-finished-jobs")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def watching(self, job_id: uuid.UUID) -> int:
        """How many requests wait on this job (for health checks and tests)."""
        return len(self._watches.get(str(job_id), ()))

    @contextlib.asynccontextmanager
    async def watch(self, job_id: uuid.UUID) -> AsyncIterator[Watch]:
        """Subscribe before reading the job's status, so an announcement between the read and
        the wait is not lost."""
        key, watch = str(job_id), Watch(self)
        self._watches.setdefault(key, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(key)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[key]

    async def _listen(self) -> None:
        import psycopg  # the API's only direct driver use: SQLAlchemy has no LISTEN API

        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self.listening, failures = True, 0
                    log.info("finished_jobs_listening", channel=CHANNEL)
                    async for note in connection.notifies():
                        for watch in self._watches.get(note.payload, ()):
                            watch.notify()
            except (psycopg.Error, OSError) as exc:
                self.listening = False  # before the back-off: waiters poll meanwhile
                delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                failures += 1
                log.warning("finished_jobs_listener_down", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
            finally:
                self.listening = False
