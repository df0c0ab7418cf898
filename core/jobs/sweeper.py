"""The sweeper re-drives work the broker lost or a dead worker left behind.

PostgreSQL is the truth: an item whose lease expired (its worker died) or whose message was
sent long ago and never claimed (Redis lost it) is dispatched again, up to the attempt cap.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.db.models import Batch, Job, JobItem, utcnow
from core.jobs import batch_counts, batches, outbox
from core.jobs.batch_counts import Tally
from core.jobs.lifecycle import lock_job, retire, settle_job, settle_parents
from core.jobs.state import TERMINAL_JOB, ItemStatus, item_transition

SENT_OUTBOX_RETENTION_SECONDS = 24 * 3600


@dataclass(frozen=True)
class SweepReport:
    redispatched: int
    failed: int
    expired_batches: int = 0


def sweep(session: Session, settings: Settings, *, limit: int = 2000) -> SweepReport:
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.redispatch_after_seconds)
    stale = or_(
        (JobItem.status == ItemStatus.RUNNING) & (JobItem.leased_until < now),
        (JobItem.status == ItemStatus.QUEUED) & (JobItem.dispatched_at < stale_before),
    )
    # Find candidates without locks, then lock job first and items second, jobs in id order:
    # the same order workers use, so the sweeper and workers can never deadlock.
    candidates = session.execute(
        select(JobItem.job_id, JobItem.id).where(stale).order_by(JobItem.id).limit(limit)
    ).tuples()
    by_job: dict[uuid.UUID, list[int]] = defaultdict(list)
    for job_id, item_id in candidates:
        by_job[job_id].append(item_id)
    redispatched = failed = 0
    # Parents (jobs of several tasks, batches of several tasks) are settled last, after every
    # child this transaction locks: children before parents, as workers lock them.
    touched: set[uuid.UUID] = set()
    job_parents: set[uuid.UUID] = set()
    for job_id in sorted(by_job):
        job = lock_job(session, job_id)
        if job is None:
            continue
        items = list(
            session.scalars(
                select(JobItem)
                .where(JobItem.id.in_(by_job[job_id]), stale)
                .order_by(JobItem.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        )
        tally = Tally()
        if job.status in TERMINAL_JOB:
            for item in items:
                retire(item)
            tally.add(job, ItemStatus.CANCELLED, len(items))
            touched.update(tally.apply(session, settle=False))
            continue
        again, gave_up = _redrive(items, settings.max_attempts)
        failed += gave_up
        if again:
            redispatched += len(again)
            _dispatch(session, settings, job, again)
        settle_job(session, job, parents=False)
        if job.parent_id is not None:
            job_parents.add(job.parent_id)
        tally.add(job, ItemStatus.FAILED, gave_up)
        touched.update(tally.apply(session, settle=False))
    settle_parents(session, job_parents)
    if touched:
        batch_counts.settle_parents(
            session,
            session.scalars(
                select(Batch.parent_id).where(Batch.id.in_(touched), Batch.parent_id.is_not(None))
            ),
        )
    outbox.purge_sent(session, SENT_OUTBOX_RETENTION_SECONDS)
    expired = batches.expire_due(session)
    return SweepReport(redispatched=redispatched, failed=failed, expired_batches=expired)


def _redrive(items: list[JobItem], max_attempts: int) -> tuple[list[int], int]:
    now = utcnow()
    again: list[int] = []
    gave_up = 0
    for item in items:
        if item.status == ItemStatus.RUNNING and item.attempts >= max_attempts:
            item.status = item_transition(item.status, ItemStatus.FAILED)
            item.error = (
                f"gave up after {item.attempts} attempts; last error: "
                f"{item.error or 'the worker holding it stopped (lease expired)'}"
            )
            item.leased_until = None
            gave_up += 1
            continue
        if item.status == ItemStatus.RUNNING:
            item.status = item_transition(item.status, ItemStatus.QUEUED)
            item.leased_until = None
        item.dispatched_at = now
        again.append(item.id)
    return again, gave_up


def _dispatch(session: Session, settings: Settings, job: Job, item_ids: list[int]) -> None:
    outbox.add_run_items(
        session,
        str(job.id),
        item_ids,
        task=job.task,
        queue=job.priority,
        chunk_size=settings.chunk_size,
        request_id=job.request_id,
    )
