"""Group commit of job submits: the submits that reach one API process at the same time share
one transaction and one set of statements (``core.jobs.submit.submit_many``).

While a batch is being written, the submits that arrive wait for it and go together in the next
one, so a single request alone is written at once and a burst costs one transaction per batch,
not one per job: the database work per job shrinks as the load grows. Every caller still gets
its own answer (its job, or its own error) only after the commit, so a 202 still means durable.
Hand-written: the pattern is a few lines of asyncio, and no library batches calls into one
SQLAlchemy transaction this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool

from core.config import Settings
from core.db.session import Database
from core.errors import InferqError
from core.jobs.submit import Submission, Submitted, submit_many

MAX_BATCH = 64  # submits written in one transaction at most


class SubmitBatcher:
    def __init__(self, database: Database, settings: Settings, max_batch: int = MAX_BATCH) -> None:
        self.database = database
        self.settings = settings
        self.max_batch = max_batch
        self._pending: list[tuple[Submission, asyncio.Future[Submitted]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def submit(self, submission: Submission) -> Submitted:
        """The job as ``submit_job`` would answer it, once its transaction has committed."""
        future: asyncio.Future[Submitted] = asyncio.get_running_loop().create_future()
        self._pending.append((submission, future))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_pending(), name="inferq-submits")
        return await future

    async def _write_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                outcomes = await run_in_threadpool(self._write, [s for s, _ in batch])
            except Exception as exc:  # the transaction failed: every caller in it gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # the caller went away; its job stands
                    continue
                if isinstance(outcome, InferqError):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _write(self, submissions: Sequence[Submission]) -> list[Submitted | InferqError]:
        with self.database.transaction() as session:
            return submit_many(session, self.settings, submissions)
