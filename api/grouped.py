"""Group commit for the API's hot path: the calls that reach one API process at the same time
share one transaction and one set of statements.

While a group is being written (or read), the calls that arrive wait for it and go together in
the next one, so a call alone runs at once and a burst costs one transaction per group, not one
per request: the database work per job shrinks as the load grows. Every caller still gets its
own answer (its value, or its own error), and a submit is answered only after its commit, so a
202 still means durable. Hand-written: the pattern is a few lines of asyncio, and no library
batches calls into one SQLAlchemy transaction this way.

``submits`` writes jobs (``core.jobs.submit.submit_many``); ``reads`` reads jobs back with their
results (``core.jobs.queries.get_jobs``) for answers that waited for a job to finish.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from core.config import Settings
from core.db.session import Database
from core.errors import InferqError
from core.jobs.presenters import job_out
from core.jobs.queries import get_jobs
from core.jobs.submit import Submission, Submitted, submit_many
from schemas.jobs import JobOut

In = TypeVar("In")
Out = TypeVar("Out")

MAX_GROUP = 64  # calls served by one transaction at most


class Grouped(Generic[In, Out]):
    """``await grouped(value)``: ``work`` runs (in a thread) on a list of waiting values and
    returns one answer per value, in order: a result, or the error that caller gets."""

    def __init__(
        self,
        work: Callable[[Sequence[In]], Sequence[Out | InferqError]],
        max_group: int = MAX_GROUP,
    ) -> None:
        self.work = work
        self.max_group = max_group
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._running: asyncio.Task[None] | None = None

    async def __call__(self, value: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((value, future))
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run_pending(), name="inferq-grouped")
        return await future

    async def _run_pending(self) -> None:
        while self._pending:
            group = self._pending[: self.max_group]
            del self._pending[: self.max_group]
            try:
                answers = await run_in_threadpool(self.work, [value for value, _ in group])
            except Exception as exc:  # the transaction failed: every caller in it gets the error
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), answer in zip(group, answers, strict=True):
                if future.done():  # the caller went away (a submit's job stands)
                    continue
                if isinstance(answer, InferqError):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)


def submits(database: Database, settings: Settings) -> Grouped[Submission, Submitted]:
    def write(group: Sequence[Submission]) -> list[Submitted | InferqError]:
        with database.transaction() as session:
            return submit_many(session, settings, group)

    return Grouped(write)


def reads(database: Database) -> Grouped[tuple[int, uuid.UUID], JobOut]:
    def read(group: Sequence[tuple[int, uuid.UUID]]) -> list[JobOut | InferqError]:
        with database.read() as session:  # shaped inside: the read's rollback expires the rows
            return [
                view if isinstance(view, InferqError) else job_out(view)
                for view in get_jobs(session, group)
            ]

    return Grouped(read)
