"""Batches: bulk work of up to INFERQ_MAX_BATCH_LINES lines, one path for every bulk door
(``POST /v1/batches``, ``inferq process``, the nightly inbox).

This module opens batches, dispatches their jobs, finds, lists, cancels and expires them; their
lines are written by core.jobs.batch_writer and their results read by core.jobs.batch_results.

A batch is a parent of jobs. Its lines are written as items of ordinary jobs of
``INFERQ_BATCH_JOB_SIZE`` inputs, each item also carrying its batch, line number and the
caller's id. Workers, the outbox, the sweeper, the result cache and the attempt cap then treat
them as any job's items: bulk work has no execution path of its own. (A batch owning its items
directly would have needed a second claim/record/settle path beside the jobs'.)

* **Streamed in.** ``BatchWriter`` (core.jobs.batch_writer) takes lines one at a time and
  holds one window of them (``INFERQ_BATCH_SORT_WINDOW`` lines, or fewer when their texts are
  long) before writing it with one INSERT for its jobs and one for its items; memory stays flat
  whatever the batch's size.
* **Sorted by length.** All of a batch's inputs are known up front, so each window is sorted by
  length before it is cut into jobs: the inputs of a job, and so of a worker's micro-batch, have
  about the same length and pad little. The line number keeps the input order for results.
* **Dispatched fairly.** Jobs of a batch are written undispatched. ``dispatch`` hands at most
  ``INFERQ_BATCH_JOBS_IN_FLIGHT`` jobs per batch to the queue, batch after batch, and tops a
  batch up each time a worker finishes some of its items (and on beat's schedule): a million-line
  batch keeps a few hundred items queued, so another tenant's small batch queues beside it
  instead of behind it. Interactive jobs still go first (their own queue, served first).
* **Counted, not scanned.** ``request_counts`` are columns of the batch, kept by the
  transactions that finish items (core.jobs.batch_counts).
* **Results in input order** are read by keyset on ``(batch_id, line)``, a page at a time
  (core.jobs.batch_results).
* **Several tasks** (``?task=a,b``): a parent batch with no lines of its own and one child
  batch per task, each written by its own ``BatchWriter`` from the same single reading of the
  upload (``TasksWriter``). The children run, count and dispatch as any batch; the parent ends
  with its last child (core.jobs.batch_counts.settle_parents), answers for them (key, webhook,
  counts summed, results merged per line), and is the only one the caller sees.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.orm import Session

from core.config import Settings
from core.db.bulk import among
from core.db.models import Batch, Job, JobItem, utcnow
from core.durations import UNITS, duration_seconds, duration_text
from core.errors import InvalidInput, InvalidTransition, NotFound
from core.jobs import outbox
from core.jobs.batch_counts import Tally, end_if_done, settle_parents
from core.jobs.lifecycle import lock_jobs, settle_jobs
from core.jobs.queries import decode_cursor, encode_cursor
from core.jobs.state import TERMINAL_BATCH, BatchStatus, ItemStatus, JobStatus
from core.jobs.submit import PRIORITIES
from core.jobs.validation import check_metadata, check_task, check_webhook_url
from core.security import audit
from core.webhooks import deliveries

EXPIRED = "expired"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class BatchRequest:
    task: str
    priority: str = "bulk"
    completion_window: str | None = None  # e.g. "24h"; INFERQ_BATCH_COMPLETION_WINDOW if unset
    webhook_url: str | None = None
    metadata: dict[str, Any] | None = field(default=None)
    idempotency_key: str | None = None
    # Several tasks on every line: a parent batch and one child batch per task (see
    # Batch.tasks); `task` is then their names joined by ",".
    tasks: tuple[str, ...] | None = None

    @classmethod
    def of_tasks(cls, tasks: Sequence[str], **options: Any) -> BatchRequest:
        """One task (a plain batch) or several (a parent batch)."""
        if len(tasks) == 1:
            return cls(tasks[0], **options)
        return cls(",".join(tasks), tasks=tuple(tasks), **options)


def window_seconds(value: str) -> int:
    return duration_seconds(value, "completion_window")


def window_text(seconds: int) -> str:
    """As OpenAI writes windows: in hours ("24h", never "1d")."""
    return duration_text(seconds) if seconds % UNITS["d"] else f"{seconds // UNITS['h']}h"


def open_batch(
    session: Session, settings: Settings, tenant_id: int, request: BatchRequest
) -> Batch:
    """The batch row, ``validating`` until ``BatchWriter.finish`` (``TasksWriter.finish`` for
    a batch of several tasks) in this same transaction."""
    for task in request.tasks or (request.task,):
        check_task(task)
    if request.tasks is not None and len(set(request.tasks)) != len(request.tasks):
        raise InvalidInput("task names a task twice")
    if request.priority not in PRIORITIES:
        raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}")
    check_webhook_url(request.webhook_url, settings)
    check_metadata(request.metadata)
    window = window_seconds(request.completion_window or settings.batch_completion_window)
    longest = window_seconds(settings.batch_max_completion_window)
    if window > longest:
        raise InvalidInput(f"completion_window is at most {window_text(longest)}")
    batch = Batch(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        task=request.task,
        status=BatchStatus.VALIDATING,
        priority=request.priority,
        idempotency_key=request.idempotency_key,
        webhook_url=request.webhook_url,
        metadata_=request.metadata,
        completion_window_seconds=window,
        total=0,
        completed=0,
        failed=0,
        cancelled=0,
        created_at=utcnow(),
        tasks=list(request.tasks) if request.tasks else None,
    )
    session.add(batch)
    session.flush()
    return batch


def find_by_key(session: Session, tenant_id: int, key: str) -> Batch | None:
    return session.scalar(
        select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key)
    )


def dispatch(
    session: Session, settings: Settings, batch_ids: Sequence[uuid.UUID] | None = None
) -> int:
    """Top up every batch in progress (or those named) to INFERQ_BATCH_JOBS_IN_FLIGHT jobs
    queued or running, the batch served longest ago first; returns how many items were handed
    to the outbox. Batch rows are locked in id order (as the writers that count finished items
    take them); undispatched jobs are taken with SKIP LOCKED, so this never waits on a job."""
    query = (
        select(Batch)
        .where(Batch.status == BatchStatus.IN_PROGRESS, Batch.tasks.is_(None))  # not parents
        .order_by(Batch.id)
        .with_for_update()
    )
    if batch_ids is not None:
        if not batch_ids:
            return 0
        query = query.where(among(session, Batch.id, list(batch_ids)))
    never = datetime.min.replace(tzinfo=UTC)
    batches = sorted(session.scalars(query), key=lambda b: b.dispatched_at or never)
    requests: list[outbox.RunRequest] = []
    for batch in batches:
        busy = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(
                Job.batch_id == batch.id,
                Job.dispatched_at.is_not(None),
                Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
            )
        )
        room = settings.batch_jobs_in_flight - int(busy or 0)
        if room <= 0:
            continue
        jobs = session.execute(
            select(Job.id, Job.task, Job.priority)
            .where(
                Job.batch_id == batch.id,
                Job.dispatched_at.is_(None),
                Job.status == JobStatus.QUEUED,
            )
            .order_by(Job.batch_seq)
            .limit(room)
            .with_for_update(skip_locked=True)
        ).all()
        if jobs:
            requests += _release_jobs(session, jobs)
            batch.dispatched_at = utcnow()
    outbox.add_run_items_many(session, requests, chunk_size=settings.chunk_size)
    return sum(len(request.item_ids) for request in requests)


def _release_jobs(session: Session, jobs: Sequence[Any]) -> list[outbox.RunRequest]:
    job_ids = [job.id for job in jobs]
    length = func.length(JobItem.text)
    items: dict[uuid.UUID, list[tuple[int, int]]] = defaultdict(list)
    for job_id, item_id, chars in session.execute(
        select(JobItem.job_id, JobItem.id, length)
        .where(among(session, JobItem.job_id, job_ids), JobItem.status == ItemStatus.QUEUED)
        .order_by(length, JobItem.id)
    ).tuples():
        items[job_id].append((item_id, chars))
    now = utcnow()
    session.execute(
        update(Job).where(among(session, Job.id, job_ids)).values(dispatched_at=now),
        execution_options={"synchronize_session": False},
    )
    session.execute(
        update(JobItem)
        .where(among(session, JobItem.job_id, job_ids), JobItem.status == ItemStatus.QUEUED)
        .values(dispatched_at=now),
        execution_options={"synchronize_session": False},
    )
    return [
        outbox.RunRequest(
            str(job.id),
            [item_id for item_id, _ in items[job.id]],
            job.task,
            job.priority,
            None,
            [chars // 4 + 2 for _, chars in items[job.id]],  # outbox.estimate_tokens
        )
        for job in jobs
        if items[job.id]
    ]


def get_batch(session: Session, tenant_id: int, batch_id: uuid.UUID) -> Batch:
    """A batch the caller sees: a task's batch under a batch of several tasks is found only
    through its parent."""
    batch = session.get(Batch, batch_id, populate_existing=True)
    if batch is None or batch.tenant_id != tenant_id or batch.parent_id is not None:
        raise NotFound(f"batch {batch_id} not found")
    return batch


def list_batches(
    session: Session, tenant_id: int, *, limit: int = 20, cursor: str | None = None
) -> tuple[list[Batch], str | None]:
    query = select(Batch).where(Batch.tenant_id == tenant_id, Batch.parent_id.is_(None))
    if cursor:
        created_at, batch_id = decode_cursor(cursor)
        query = query.where(tuple_(Batch.created_at, Batch.id) < tuple_(created_at, batch_id))
    batches = list(
        session.scalars(query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1))
    )
    next_cursor = encode_cursor(batches[limit - 1]) if len(batches) > limit else None
    return batches[:limit], next_cursor


def cancel_batch(
    session: Session, tenant_id: int, batch_id: uuid.UUID, actor: str = "system"
) -> Batch:
    """What has not run is cancelled; what runs now finishes and keeps its result. The batch is
    ``cancelling`` until then, ``cancelled`` after. A batch of several tasks cancels each
    task's batch, then itself (children before parent)."""
    batch = get_batch(session, tenant_id, batch_id)
    if batch.status == BatchStatus.CANCELLING:
        return batch
    if batch.status in TERMINAL_BATCH:
        raise InvalidTransition(f"batch {batch_id} is {batch.status}; there is nothing to cancel")
    if batch.tasks:
        children = session.scalars(
            select(Batch.id)
            .where(Batch.parent_id == batch_id, Batch.status == BatchStatus.IN_PROGRESS)
            .order_by(Batch.id)
        ).all()
        for child_id in children:
            _end_unfinished(session, child_id, ItemStatus.CANCELLED, CANCELLED, _NOT_RUN)
        parent = session.scalars(
            select(Batch)
            .where(Batch.id == batch_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        if parent.status in TERMINAL_BATCH:  # its last task ended while this waited: undone
            raise InvalidTransition(f"batch {batch_id} is {parent.status}; nothing to cancel")
        parent.status, parent.cancelling_at = BatchStatus.CANCELLING, utcnow()
        settle_parents(session, [batch_id])  # every task's batch cancelled at once: over now
    else:
        _end_unfinished(session, batch_id, ItemStatus.CANCELLED, CANCELLED, _NOT_RUN)
    audit.record(session, actor, "batch.cancelled", tenant_id, target=str(batch_id))
    batch = get_batch(session, tenant_id, batch_id)
    return batch


def expire_due(session: Session) -> int:
    """Batches past their completion window: every unfinished line ends ``expired`` (a failed
    line whose error says so); the batch ends ``expired``. A batch of several tasks ends with
    its tasks' batches (after them: children before parents). Returns how many batches
    expired, parents not counted."""
    due = session.execute(
        select(Batch.id, Batch.parent_id)
        .where(
            Batch.status.in_([BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING]),
            Batch.expires_at < utcnow(),
            Batch.tasks.is_(None),
        )
        .order_by(Batch.id)
    ).all()
    for batch_id, _ in due:
        _end_unfinished(
            session,
            batch_id,
            ItemStatus.FAILED,
            EXPIRED,
            "the batch's completion window ended before this line ran",
        )
    settle_parents(session, [parent_id for _, parent_id in due if parent_id is not None])
    return len(due)


def _end_unfinished(
    session: Session, batch_id: uuid.UUID, status: ItemStatus, code: str, message: str
) -> None:
    """Lock order as every writer: the batch's open jobs (id order), their items, the batch.
    A parent is not settled here: the caller does, once every child it ends is locked."""
    open_jobs = session.scalars(
        select(Job.id).where(
            Job.batch_id == batch_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        )
    ).all()
    jobs = lock_jobs(session, {job_id: [] for job_id in open_jobs})
    ending = [ItemStatus.QUEUED] if status == ItemStatus.CANCELLED else list(_UNFINISHED)
    now = utcnow()
    ended = session.execute(
        update(JobItem)
        .where(JobItem.batch_id == batch_id, JobItem.status.in_(ending))
        .values(status=status, error=message, error_code=code, leased_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    batch = session.scalars(
        select(Batch)
        .where(Batch.id == batch_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if code == EXPIRED:
        batch.status = BatchStatus.EXPIRED
        batch.expired_at = now
    else:
        batch.status = BatchStatus.CANCELLING
        batch.cancelling_at = now
    settle_jobs(session, jobs.values())
    tally = Tally()
    tally.add_for_batch(batch_id, status, int(ended.rowcount or 0))  # type: ignore[attr-defined]
    tally.apply(session, settle=False)  # the caller settles parents after all its children
    if code == EXPIRED:
        deliveries.add_batch_event(session, batch)
    else:
        end_if_done(session, batch_id)  # nothing was running: cancelled at once


_UNFINISHED = (ItemStatus.QUEUED, ItemStatus.RUNNING)
_NOT_RUN = "cancelled before it ran"
