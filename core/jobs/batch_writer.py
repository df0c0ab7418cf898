"""Writing a batch's lines: ``BatchWriter`` streams one task's lines into PostgreSQL a window
at a time (sorted by length, cut into jobs of ``INFERQ_BATCH_JOB_SIZE`` items, cached inputs
served and refused lines failed as they are written); ``TasksWriter`` hands each line to one
``BatchWriter`` per task of a batch of several tasks; ``LineHash`` and ``content_hash`` hash the
lines, which an Idempotency-Key is compared against. core.jobs.batches says how bulk work runs
as jobs; its ``open_batch`` makes the batch these write into."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.db.bulk import among, insert_rows
from core.db.models import Batch, Job, JobItem, utcnow
from core.errors import InvalidInput, NotNdjson, PayloadTooLarge
from core.inference.engine import Output
from core.jobs.batch_counts import end_if_done, settle_parents
from core.jobs.batch_input import DUPLICATE_ID, INVALID_JSON, INVALID_UTF8, Line, refused
from core.jobs.batches import dispatch
from core.jobs.lifecycle import ClaimedItem, insert_cached_results
from core.jobs.state import BatchStatus, ItemStatus, JobStatus, settled_job_status
from core.jobs.submit import cached_outputs, input_hash
from core.security.quotas import PendingQuota

# A window is written early once its texts reach this many characters (long texts, few lines).
WINDOW_TEXT_CHARS = 8_000_000


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
