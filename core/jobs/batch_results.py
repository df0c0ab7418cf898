"""Reading a batch: ``batch_out`` (the batch as GET returns it, counts and usage summed over
its tasks' batches for a batch of several tasks) and its results in input order, read by
keyset on ``(batch_id, line)`` a page at a time: ``result_page`` for one task's batch,
``merged_page`` for a batch of several tasks (one line, every task's result), ``iter_results``
for every finished line, page after page."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from core.db.models import Batch, JobItem, Result
from core.db.session import Database
from core.jobs.batch_counts import children_counts
from core.jobs.batches import CANCELLED, window_text
from core.jobs.presenters import RESULT_COLUMNS
from core.jobs.state import TERMINAL_ITEM, ItemStatus
from core.jobs.usage import batch_usage, summed
from schemas.batches import BatchOut, RequestCounts
from schemas.jobs import Usage

RESULT_PAGE_LINES = 1000
INFERENCE_FAILED = "inference_failed"


def batch_out(batch: Batch, public_url: str = "") -> BatchOut:
    """The batch as GET returns it; its usage is summed over its jobs through the session it
    was read in (none attached: a detached copy, shown without usage). A batch of several
    tasks counts (line, task) pairs and sums usage over its tasks' batches."""
    total, completed, failed, cancelled = (
        batch.total,
        batch.completed,
        batch.failed,
        batch.cancelled,
    )
    session = object_session(batch)
    usage = Usage()
    if session is not None and batch.tasks:
        total, completed, failed, cancelled = children_counts(session, batch.id)
        children = session.scalars(select(Batch.id).where(Batch.parent_id == batch.id)).all()
        usage = summed([batch_usage(session, child_id) for child_id in children])
    elif session is not None:
        usage = batch_usage(session, batch.id)
    return BatchOut(
        id=batch.id,
        task=batch.task,
        tasks=batch.tasks,
        status=batch.status,
        priority=batch.priority,
        completion_window=window_text(batch.completion_window_seconds),
        request_counts=RequestCounts(
            total=total,
            completed=completed,
            failed=failed,
            pending=max(0, total - completed - failed - cancelled),
            cancelled=cancelled,
        ),
        created_at=batch.created_at,
        in_progress_at=batch.in_progress_at,
        finalizing_at=batch.finalizing_at,
        completed_at=batch.completed_at,
        failed_at=batch.failed_at,
        expires_at=batch.expires_at,
        expired_at=batch.expired_at,
        cancelling_at=batch.cancelling_at,
        cancelled_at=batch.cancelled_at,
        metadata=batch.metadata_,
        results_url=f"{public_url.rstrip('/')}/v1/batches/{batch.id}/results",
        usage=usage,
    )


_RESULT_COLUMNS = (
    JobItem.line,
    JobItem.external_id,
    JobItem.status,
    JobItem.error,
    JobItem.error_code,
    *RESULT_COLUMNS,
)


@dataclass(frozen=True)
class ResultPage:
    lines: list[tuple[int, dict[str, Any]]]  # (line number, result line)
    last_line: int  # the cursor for the next page
    waiting: bool  # stopped at a line that has not finished (ordered reads only)


def result_page(
    session: Session,
    batch_id: uuid.UUID,
    after_line: int = 0,
    *,
    only_errors: bool = False,
    until_unfinished: bool = False,
    limit: int = RESULT_PAGE_LINES,
) -> ResultPage:
    """The next finished lines after ``after_line``, in input order. ``until_unfinished``
    stops at the first line still to run (a reader writing a file in order waits there);
    otherwise unfinished lines are skipped."""
    query = (
        select(*_RESULT_COLUMNS)
        .outerjoin(Result, Result.item_id == JobItem.id)
        .where(JobItem.batch_id == batch_id, JobItem.line > after_line)
        .order_by(JobItem.line)
        .limit(limit)
    )
    if not until_unfinished:
        query = query.where(JobItem.status.in_(list(TERMINAL_ITEM)))
    lines: list[tuple[int, dict[str, Any]]] = []
    last = after_line
    for row in session.execute(query):
        if row.status not in TERMINAL_ITEM:
            return ResultPage(lines, last, waiting=True)
        last = row.line
        if only_errors and row.status == ItemStatus.SUCCEEDED:
            continue
        lines.append((row.line, result_line(row)))
    return ResultPage(lines, last, waiting=False)


def result_line(row: Any) -> dict[str, Any]:
    if row.status == ItemStatus.SUCCEEDED and row.model is not None:
        extra = row.output or {}
        result = {
            key: value
            for key, value in (
                ("label", row.label),
                ("score", row.score),
                ("scores", extra.get("scores")),
                ("embedding", extra.get("embedding")),
                ("entities", extra.get("entities")),
            )
            if value is not None
        }
        result |= {
            "model": row.model,
            "version": row.version,
            "tier": row.tier,
            "degraded": row.degraded,
            "cached": row.cached,
        }
        return {"id": row.external_id, "result": result}
    code = row.error_code or (CANCELLED if row.status == ItemStatus.CANCELLED else INFERENCE_FAILED)
    message = row.error or f"the line is {row.status}"
    return {"id": row.external_id, "line": row.line, "error": {"code": code, "message": message}}


def iter_results(
    database: Database, batch_id: uuid.UUID, *, only_errors: bool = False
) -> Iterator[dict[str, Any]]:
    """Every finished line of the batch in input order, a page (one short read) at a time. A
    batch of several tasks: each line once every task has finished it, as
    ``{"id", "tasks": {task: {"result"} | {"line", "error"}}}``."""
    with database.read() as session:
        children = task_batches(session, batch_id)
    after = 0
    while True:
        with database.read() as session:
            if children:
                page = merged_page(session, children, after, only_errors=only_errors)
            else:
                page = result_page(session, batch_id, after, only_errors=only_errors)
        yield from (line for _, line in page.lines)
        if page.last_line == after:
            return
        after = page.last_line


def task_batches(session: Session, parent_id: uuid.UUID) -> list[tuple[str, uuid.UUID]]:
    """A batch of several tasks' (task, child batch id), in the order of its tasks; none for a
    batch of one task."""
    tasks = session.scalar(select(Batch.tasks).where(Batch.id == parent_id))
    if not tasks:
        return []
    found = {
        task: child_id
        for task, child_id in session.execute(
            select(Batch.task, Batch.id).where(Batch.parent_id == parent_id)
        ).tuples()
    }
    return [(task, found[task]) for task in tasks if task in found]


def merged_page(
    session: Session,
    children: Sequence[tuple[str, uuid.UUID]],
    after_line: int = 0,
    *,
    only_errors: bool = False,
    limit: int = RESULT_PAGE_LINES,
) -> ResultPage:
    """The next ``limit`` lines after ``after_line`` of a batch of several tasks, read from each
    task's batch in lockstep: every task's batch holds the same line numbers (each was written
    from the same lines), so the n-th row of each is the same line. A line some task has not
    finished is skipped; ``only_errors`` keeps lines with an error in any task."""
    pages = [
        session.execute(
            select(*_RESULT_COLUMNS)
            .outerjoin(Result, Result.item_id == JobItem.id)
            .where(JobItem.batch_id == child_id, JobItem.line > after_line)
            .order_by(JobItem.line)
            .limit(limit)
        ).all()
        for _, child_id in children
    ]
    lines: list[tuple[int, dict[str, Any]]] = []
    last = after_line
    for rows in zip(*pages, strict=True):
        last = rows[0].line
        if any(row.status not in TERMINAL_ITEM for row in rows):
            continue
        if only_errors and all(row.status == ItemStatus.SUCCEEDED for row in rows):
            continue
        by_task = {
            task: {key: value for key, value in result_line(row).items() if key != "id"}
            for (task, _), row in zip(children, rows, strict=True)
        }
        lines.append((last, {"id": rows[0].external_id, "tasks": by_task}))
    return ResultPage(lines, last, waiting=False)
