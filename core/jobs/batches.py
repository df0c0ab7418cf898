"""Batches: bulk work of up to INFERQ_MAX_BATCH_LINES lines, one path for every bulk door
(``POST /v1/batches``, ``inferq process``, the nightly inbox).

A batch is a parent of jobs. Its lines are written as items of ordinary jobs of
``INFERQ_BATCH_JOB_SIZE`` inputs, each item also carrying its batch, line number and the
caller's id. Workers, the outbox, the sweeper, the result cache and the attempt cap then treat
them as any job's items: bulk work has no execution path of its own. (A batch owning its items
directly would have needed a second claim/record/settle path beside the jobs'.)

* **Streamed in.** ``BatchWriter`` takes lines one at a time and holds one window of them
  (``INFERQ_BATCH_SORT_WINDOW`` lines, or fewer when their texts are long) before writing it with
  one INSERT for its jobs and one for its items; memory stays flat whatever the batch's size.
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
* **Results in input order** are read by keyset on ``(batch_id, line)``, a page at a time.
* **Several tasks** (``?task=a,b``): a parent batch with no lines of its own and one child
  batch per task, each written by its own ``BatchWriter`` from the same single reading of the
  upload (``TasksWriter``). The children run, count and dispatch as any batch; the parent ends
  with its last child (core.jobs.batch_counts.settle_parents), answers for them (key, webhook,
  counts summed, results merged per line), and is the only one the caller sees.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.orm import Session, object_session

from core.config import Settings
from core.db.bulk import among, insert_rows
from core.db.models import Batch, Job, JobItem, Result, utcnow
from core.db.session import Database
from core.durations import UNITS, duration_seconds, duration_text
from core.errors import InvalidInput, InvalidTransition, NotFound, NotNdjson, PayloadTooLarge
from core.inference.engine import Output
from core.jobs import outbox
from core.jobs.batch_counts import Tally, children_counts, end_if_done, settle_parents
from core.jobs.batch_input import DUPLICATE_ID, INVALID_JSON, INVALID_UTF8, Line, refused
from core.jobs.lifecycle import ClaimedItem, insert_cached_results, lock_jobs, settle_jobs
from core.jobs.queries import decode_cursor, encode_cursor
from core.jobs.state import (
    TERMINAL_BATCH,
    TERMINAL_ITEM,
    BatchStatus,
    ItemStatus,
    JobStatus,
    settled_job_status,
)
from core.jobs.submit import PRIORITIES, cached_outputs, input_hash
from core.jobs.usage import batch_usage, summed
from core.jobs.validation import check_metadata, check_task, check_webhook_url
from core.security import audit
from core.security.quotas import PendingQuota
from core.webhooks import deliveries
from schemas.batches import BatchOut, RequestCounts
from schemas.jobs import Usage

# A window is written early once its texts reach this many characters (long texts, few lines).
WINDOW_TEXT_CHARS = 8_000_000
RESULT_PAGE_LINES = 1000
EXPIRED = "expired"
CANCELLED = "cancelled"
INFERENCE_FAILED = "inference_failed"


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


def _open_child(session: Session, parent: Batch, task: str) -> Batch:
    """One task's batch under ``parent``: same tenant, priority and window (it expires with
    the parent); no key, webhook or metadata (the parent answers for it)."""
    child = Batch(
        id=uuid.uuid4(),
        tenant_id=parent.tenant_id,
        task=task,
        status=BatchStatus.VALIDATING,
        priority=parent.priority,
        completion_window_seconds=parent.completion_window_seconds,
        total=0,
        completed=0,
        failed=0,
        cancelled=0,
        created_at=parent.created_at,
        parent_id=parent.id,
    )
    session.add(child)
    session.flush()
    return child


def find_by_key(session: Session, tenant_id: int, key: str) -> Batch | None:
    return session.scalar(
        select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key)
    )


class LineHash:
    """The content hash of a batch's lines (what an Idempotency-Key is compared against, and
    what makes a nightly file or a ``process`` input the same batch again)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, line: Line) -> None:
        body = line.text if line.text is not None else f"\x00{line.error_code}"
        self._digest.update(f"{line.number}\x1f{line.id}\x1f{body}\x1e".encode("utf-8", "replace"))

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def content_hash(lines: Iterable[Line]) -> str:
    digest = LineHash()
    for line in lines:
        digest.add(line)
    return digest.hexdigest()


class BatchWriter:
    """Writes a batch's lines as they arrive, one window at a time, in the caller's
    transaction; ``finish`` puts the batch in progress and dispatches its first jobs."""

    def __init__(
        self,
        session: Session,
        settings: Settings,
        batch: Batch,
        max_pending_inputs: int | None = None,
        quota: PendingQuota | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.batch = batch
        # Each window counts against the tenant's quota of pending inputs before it is written
        # (one PendingQuota shared by the writers of one upload's tasks).
        self.max_pending_inputs = max_pending_inputs
        self._quota = quota or PendingQuota(session)
        self.hash = LineHash()
        self._window: list[Line] = []
        self._chars = 0
        self._seq = 0
        self._lines = 0
        self._parsed = 0  # lines that were JSON objects (or text lines): is this NDJSON at all?

    def add(self, line: Line) -> None:
        self._lines += 1
        if self._lines > self.settings.max_batch_lines:
            raise PayloadTooLarge(
                f"a batch holds at most {self.settings.max_batch_lines:,} lines "
                "(INFERQ_MAX_BATCH_LINES); split the file"
            )
        if line.error_code not in (INVALID_JSON, INVALID_UTF8):
            self._parsed += 1
        self.hash.add(line)
        self._window.append(line)
        self._chars += len(line.text or "")
        if len(self._window) >= self.settings.batch_sort_window or self._chars >= WINDOW_TEXT_CHARS:
            self._flush()

    def add_all(self, lines: Iterable[Line]) -> None:
        for line in lines:
            self.add(line)

    def finish(self) -> Batch:
        self._flush()
        batch = self.batch
        if self._lines == 0:
            raise InvalidInput('the batch has no lines; send a JSON object ({"text": ...}) a line')
        if self._parsed == 0:
            raise NotNdjson(
                "not one line of the body is a JSON object; send NDJSON, one "
                '{"id": ..., "text": ...} a line'
            )
        now = utcnow()
        batch.content_hash = self.hash.hexdigest()
        batch.status = BatchStatus.IN_PROGRESS
        batch.in_progress_at = now
        batch.expires_at = batch.created_at + timedelta(seconds=batch.completion_window_seconds)
        self.session.flush()
        end_if_done(self.session, batch.id)  # every line cached or refused: over already
        dispatch(self.session, self.settings, [batch.id])
        return batch

    def _flush(self) -> None:
        lines, self._window, self._chars = self._window, [], 0
        if not lines:
            return
        lines = self._refuse_duplicates(lines)
        task, batch = self.batch.task, self.batch
        good = [line for line in lines if line.ok]
        self._quota.take(batch.tenant_id, len(good), self.max_pending_inputs)
        bad = [line for line in lines if not line.ok]
        hashes = {line.number: input_hash(task, line.text or "") for line in good}
        cached = cached_outputs(self.session, self.settings, task, sorted(set(hashes.values())))
        if self.settings.batch_sort_by_length:
            good.sort(key=lambda line: len(line.text or ""))  # stable: ties keep input order
        size = self.settings.batch_job_size
        groups = [good[i : i + size] for i in range(0, len(good), size)] + ([bad] if bad else [])
        now = utcnow()
        job_rows: list[dict[str, Any]] = []
        item_rows: list[dict[str, Any]] = []
        for group in groups:
            job_id = uuid.uuid4()
            statuses = [self._status(line, hashes, cached) for line in group]
            settled = settled_job_status(statuses)
            job_rows.append(self._job_row(job_id, len(group), settled, now))
            for index, (line, status) in enumerate(zip(group, statuses, strict=True)):
                item_rows.append(
                    {
                        "job_id": job_id,
                        "index": index,
                        "text": line.text or "",
                        "input_hash": hashes.get(line.number, ""),
                        "status": status,
                        "error": line.error,
                        "error_code": line.error_code,
                        "batch_id": batch.id,
                        "line": line.number,
                        "external_id": line.id,
                    }
                )
        insert_rows(self.session, Job, job_rows)
        returning = [JobItem.id, JobItem.job_id, JobItem.index]
        ids = {
            (job_id, index): item_id
            for item_id, job_id, index in insert_rows(
                self.session, JobItem, item_rows, returning=returning
            )
        }
        served: list[tuple[Job, ClaimedItem, Output]] = []
        for row in item_rows:
            output = cached.get(row["input_hash"])
            if output is not None and row["status"] == ItemStatus.SUCCEEDED:
                claimed = ClaimedItem(
                    ids[(row["job_id"], row["index"])], row["index"], row["text"], row["input_hash"]
                )
                served.append((Job(id=row["job_id"], task=task), claimed, output))
        insert_cached_results(self.session, served)
        batch.total += len(lines)
        batch.completed += len(served)
        batch.failed += len(bad)

    def _status(self, line: Line, hashes: dict[int, str], cached: dict[str, Output]) -> str:
        if not line.ok:
            return ItemStatus.FAILED
        if hashes[line.number] in cached:
            return ItemStatus.SUCCEEDED
        return ItemStatus.QUEUED

    def _job_row(
        self, job_id: uuid.UUID, size: int, settled: JobStatus | None, now: datetime
    ) -> dict[str, Any]:
        batch = self.batch
        self._seq += 1
        return {
            "id": job_id,
            "tenant_id": batch.tenant_id,
            "task": batch.task,
            "status": settled or JobStatus.QUEUED,
            "priority": batch.priority,
            "idempotency_key": None,
            "request_hash": f"batch:{batch.id}",
            "request_id": None,
            "webhook_url": None,
            "metadata": None,
            "total_items": size,
            "error": "every input failed; see each input's error"
            if settled == JobStatus.FAILED
            else None,
            "created_at": now,
            "updated_at": now,
            "finished_at": now if settled else None,
            "batch_id": batch.id,
            "batch_seq": self._seq,
            "dispatched_at": now if settled else None,
        }

    def _refuse_duplicates(self, lines: list[Line]) -> list[Line]:
        """A line whose id an earlier line of the batch has (in this window, or already written)
        is refused; the earlier one runs."""
        earlier = set(
            self.session.scalars(
                select(JobItem.external_id).where(
                    JobItem.batch_id == self.batch.id,
                    among(self.session, JobItem.external_id, sorted({li.id for li in lines})),
                )
            )
        )
        kept: list[Line] = []
        for line in lines:
            if line.id in earlier:
                message = f"line {line.number}: id {line.id!r} is already used by an earlier line"
                kept.append(refused(line.number, DUPLICATE_ID, message, line.id))
            else:
                earlier.add(line.id)
                kept.append(line)
        return kept


class TasksWriter:
    """A batch of several tasks: one ``BatchWriter`` per task, each line handed to every one
    (the upload is read once); ``finish`` puts the parent in progress with its children."""

    def __init__(
        self,
        session: Session,
        settings: Settings,
        parent: Batch,
        max_pending_inputs: int | None = None,
    ) -> None:
        self.session = session
        self.batch = parent
        quota = PendingQuota(session)  # lines x tasks against the tenant's quota
        self.writers = [
            BatchWriter(
                session, settings, _open_child(session, parent, task), max_pending_inputs, quota
            )
            for task in parent.tasks or ()
        ]
        self.hash = self.writers[0].hash  # the same lines in every child

    def add(self, line: Line) -> None:
        for writer in self.writers:
            writer.add(line)

    def add_all(self, lines: Iterable[Line]) -> None:
        for line in lines:
            self.add(line)

    def finish(self) -> Batch:
        children = [writer.finish() for writer in self.writers]
        parent = self.batch
        parent.content_hash = self.hash.hexdigest()
        parent.status = BatchStatus.IN_PROGRESS
        parent.in_progress_at = children[0].in_progress_at
        parent.expires_at = children[0].expires_at
        parent.total = sum(child.total for child in children)
        self.session.flush()
        settle_parents(self.session, [parent.id])  # every child over already (cache, refusals)
        return parent


def batch_writer(
    session: Session, settings: Settings, batch: Batch, max_pending_inputs: int | None = None
) -> BatchWriter | TasksWriter:
    """The writer for a batch ``open_batch`` returned: of one task or of several."""
    if batch.tasks:
        return TasksWriter(session, settings, batch, max_pending_inputs)
    return BatchWriter(session, settings, batch, max_pending_inputs)


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
    Result.label,
    Result.score,
    Result.output,
    Result.model,
    Result.version,
    Result.tier,
    Result.degraded,
    Result.cached,
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


def is_over(batch: Batch) -> bool:
    return batch.status in TERMINAL_BATCH


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
