"""What a worker does to items: claim them under a lease, record their results, release them
after a failed attempt, and settle the job once every item is terminal.

Each function runs inside the caller's transaction and locks the job rows first (in id order,
as every writer does, so two batches never deadlock), so concurrent workers finishing chunks of
the same job settle it exactly once.

A worker's micro-batch often holds hundreds of single-input jobs. So claiming and recording are
set-based (``claim_many``, ``record_many``): a fixed handful of statements per batch, whatever the
number of jobs in it, instead of a handful per job; the one-job forms wrap them.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Label, Row, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from core.db.bulk import among, insert_rows
from core.db.models import Job, JobItem, Result, utcnow
from core.inference.engine import Output
from core.jobs import outbox, usage
from core.jobs.batch_counts import Tally
from core.jobs.finished import announce_finished_many
from core.jobs.state import (
    TERMINAL_ITEM,
    TERMINAL_JOB,
    ItemStatus,
    JobStatus,
    item_transition,
    job_transition,
    settled_job_status,
)
from core.webhooks import deliveries


@dataclass(frozen=True)
class ClaimedItem:
    id: int
    index: int
    text: str
    input_hash: str


@dataclass(frozen=True)
class Claim:
    job_id: uuid.UUID
    task: str
    priority: str
    items: list[ClaimedItem]
    batch_id: uuid.UUID | None = None  # set for a batch's job: its dispatcher tops it up


def lock_job(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id, with_for_update=True, populate_existing=True)


def lock_jobs(session: Session, job_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Job]:
    """Lock these jobs in one statement, in id order. Missing ids are left out."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    query = (
        select(Job)
        .where(among(session, Job.id, ids))
        .order_by(Job.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {job.id: job for job in session.scalars(query)}


def _lock_items(session: Session, job_id: uuid.UUID, item_ids: Sequence[int]) -> list[JobItem]:
    query = (
        select(JobItem)
        .where(JobItem.job_id == job_id, JobItem.id.in_(list(item_ids)))
        .order_by(JobItem.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(session.scalars(query))


# The claim and record paths run on every batch, so they read plain rows and write with one
# UPDATE per outcome instead of loading and flushing ORM objects (~100 ms per 512-item batch).
_STATUS_COLUMNS = (JobItem.id, JobItem.job_id, JobItem.status)
_CLAIM_COLUMNS = (
    *_STATUS_COLUMNS,
    JobItem.index.label("position"),  # a row is a tuple: "index" is taken by tuple.index()
    JobItem.text,
    JobItem.input_hash,
    JobItem.attempts,
    JobItem.leased_until,
    JobItem.error,
)


def _locked_rows(
    session: Session,
    requested: Mapping[uuid.UUID, Sequence[int]],
    columns: Sequence[InstrumentedAttribute[Any] | Label[Any]],
) -> Sequence[Row[Any]]:
    """The requested items, locked, in id order; an id that is not its job's is left out."""
    wanted = {(job_id, item_id) for job_id, ids in requested.items() for item_id in ids}
    if not wanted:
        return []
    query = (
        select(*columns)
        .where(among(session, JobItem.id, sorted({item_id for _, item_id in wanted})))
        .order_by(JobItem.id)
        .with_for_update()
    )
    return [row for row in session.execute(query) if (row.job_id, row.id) in wanted]


def _set_items(session: Session, item_ids: Sequence[int], **values: Any) -> None:
    """One UPDATE for these items; statuses were checked against the state machine first."""
    if item_ids:
        statement = update(JobItem).where(among(session, JobItem.id, item_ids))
        session.execute(
            statement.values(**values, updated_at=utcnow()),
            execution_options={"synchronize_session": False},
        )


def claim_items(
    session: Session,
    job_id: uuid.UUID,
    item_ids: Sequence[int],
    *,
    lease_seconds: float,
    max_attempts: int,
) -> Claim | None:
    """``claim_many`` for one job: None when the job is gone or already over."""
    claims = claim_many(
        session, {job_id: item_ids}, lease_seconds=lease_seconds, max_attempts=max_attempts
    )
    return claims.get(job_id)


def claim_many(
    session: Session,
    requested: Mapping[uuid.UUID, Sequence[int]],
    *,
    lease_seconds: float,
    max_attempts: int,
) -> dict[uuid.UUID, Claim]:
    """Lease the items that are free to run, for every job of a batch at once. Items finished,
    leased by a live worker, or in a cancelled job are skipped, which makes a redelivered
    message harmless. A job that is gone or over gets no claim; the others get one each,
    perhaps with no items."""
    jobs = {
        job_id: job
        for job_id, job in lock_jobs(session, requested).items()
        if job.status not in TERMINAL_JOB
    }
    now = utcnow()
    claimed: dict[uuid.UUID, list[ClaimedItem]] = {job_id: [] for job_id in jobs}
    gave_up: set[uuid.UUID] = set()
    tally = Tally()
    rows = _locked_rows(session, {j: requested[j] for j in jobs}, _CLAIM_COLUMNS)
    for item in rows:
        lease_over = item.leased_until is None or item.leased_until <= now
        if item.status == ItemStatus.RUNNING and not lease_over:
            continue
        if item.status not in (ItemStatus.QUEUED, ItemStatus.RUNNING):
            continue
        if item.attempts >= max_attempts:
            reason = (
                f"gave up after {item.attempts} attempts; last error: "
                f"{item.error or 'the worker holding it stopped (lease expired)'}"
            )
            failed = item_transition(item.status, ItemStatus.FAILED)
            _set_items(session, [item.id], status=failed, error=reason)
            gave_up.add(item.job_id)
            tally.add(jobs[item.job_id], failed)
            continue
        item_transition(item.status, ItemStatus.RUNNING)
        claimed[item.job_id].append(ClaimedItem(item.id, item.position, item.text, item.input_hash))
    _set_items(
        session,
        [item.id for items in claimed.values() for item in items],
        status=ItemStatus.RUNNING,
        attempts=JobItem.attempts + 1,
        leased_until=now + timedelta(seconds=lease_seconds),
    )
    for job_id, job in jobs.items():
        if claimed[job_id] and job.status == JobStatus.QUEUED:
            job.status = job_transition(job.status, JobStatus.RUNNING)
    # Giving up is the only way a claim finishes an item, and so perhaps its job.
    settle_jobs(session, [jobs[job_id] for job_id in sorted(gave_up)])
    tally.apply(session)
    return {
        job_id: Claim(job_id, job.task, job.priority, claimed[job_id], job.batch_id)
        for job_id, job in jobs.items()
    }


def record_results(
    session: Session, job_id: uuid.UUID, outcomes: Sequence[tuple[ClaimedItem, Output]]
) -> int:
    """``record_many`` for one job."""
    return record_many(session, {job_id: outcomes}).get(job_id, 0)


def record_many(
    session: Session,
    outcomes: Mapping[uuid.UUID, Sequence[tuple[ClaimedItem, Output]]],
    shares: Mapping[int, usage.ModelShare] | None = None,
) -> dict[uuid.UUID, int]:
    """Write one result per finished item (idempotent) and mark the items succeeded, for every
    job of a batch at once; add the jobs' usage (``shares``: each item's part of its model
    call, by item id); then settle the jobs whose items are all terminal.

    Returns how many results this call wrote per job; a duplicate delivery writes none, and
    adds no usage."""
    jobs = lock_jobs(session, outcomes)
    by_id = {
        claimed.id: (claimed, output) for job_id in jobs for claimed, output in outcomes[job_id]
    }
    requested = {job_id: [claimed.id for claimed, _ in outcomes[job_id]] for job_id in jobs}
    live = [
        item
        for item in _locked_rows(session, requested, _STATUS_COLUMNS)
        if item.status not in TERMINAL_ITEM
    ]
    _insert_result_rows(session, [(jobs[item.job_id], *by_id[item.id]) for item in live], utcnow())
    shares = shares or {}
    usage.add_usage(
        session,
        usage.deltas((item.job_id, by_id[item.id][1], shares.get(item.id)) for item in live),
    )
    for item in live:
        item_transition(item.status, ItemStatus.SUCCEEDED)
    _set_items(
        session,
        [item.id for item in live],
        status=ItemStatus.SUCCEEDED,
        leased_until=None,
        error=None,
    )
    settle_jobs(session, jobs.values())
    tally = Tally()
    for item in live:
        tally.add(jobs[item.job_id], ItemStatus.SUCCEEDED)
    tally.apply(session)
    # A result is only ever written in the transaction that makes its item succeed, so each
    # live (locked, unfinished) item had none: every one of them got its result now.
    written: dict[uuid.UUID, int] = defaultdict(int)
    for item in live:
        written[item.job_id] += 1
    return dict(written)


def release_items(
    session: Session,
    job_id: uuid.UUID,
    item_ids: Sequence[int],
    error: str,
    max_attempts: int,
    *,
    final: bool = False,
) -> list[int]:
    """After a failed attempt: items under the attempt cap go back to queued (returned, to be
    dispatched again); the rest fail with the reason, and so does every item when the failure
    is `final` (no attempt could end otherwise). A cancelled job's items are retired."""
    job = lock_job(session, job_id)
    if job is None:
        return []
    retry: list[int] = []
    tally = Tally()
    for item in _lock_items(session, job_id, item_ids):
        if item.status != ItemStatus.RUNNING:
            continue
        item.error = error
        item.leased_until = None
        if job.status in TERMINAL_JOB:
            retire(item)
        elif final:
            _fail(item, error)
        elif item.attempts >= max_attempts:
            _fail(item, f"gave up after {item.attempts} attempts; last error: {error}")
        else:
            item.status = item_transition(item.status, ItemStatus.QUEUED)
            item.dispatched_at = utcnow()
            retry.append(item.id)
            continue
        tally.add(job, item.status)
    settle_job(session, job)
    tally.apply(session)
    return retry


def settle_job(session: Session, job: Job, *, parents: bool = True) -> None:
    settle_jobs(session, [job], parents=parents)


def settle_jobs(session: Session, jobs: Iterable[Job], *, parents: bool = True) -> None:
    """Finish the jobs (locked by the caller) whose items are all terminal: their status, and
    in the same transaction their Kafka result row, webhook event and long-poll announcement.
    ``parents=False``: a caller that locks more jobs after this settles their parents itself
    (``settle_parents``), last."""
    open_jobs = {job.id: job for job in jobs if job.status not in TERMINAL_JOB}
    if not open_jobs:
        return
    session.flush()
    statuses: dict[uuid.UUID, list[str]] = defaultdict(list)
    for job_id, status in session.execute(
        select(JobItem.job_id, JobItem.status)
        .where(among(session, JobItem.job_id, list(open_jobs)))
        .group_by(JobItem.job_id, JobItem.status)
    ).tuples():
        statuses[job_id].append(status)
    finished: list[Job] = []
    now = utcnow()
    for job_id, job in open_jobs.items():
        target = settled_job_status(statuses[job_id])
        if target is None:
            continue
        job.status = job_transition(job.status, target)
        job.finished_at = now
        if target == JobStatus.FAILED:
            job.error = "every input failed; see each input's error"
        finished.append(job)
    if finished:
        outbox.add_kafka_results(session, finished)
        for job in finished:
            deliveries.add_job_event(session, job)
        announce_finished_many(session, [job.id for job in finished])
        if parents:
            settle_parents(session, [j.parent_id for j in finished if j.parent_id is not None])


def settle_parents(session: Session, parent_ids: Iterable[uuid.UUID]) -> None:
    """Finish the jobs of several tasks whose last child just ended, in the transaction that
    ended it: failed if every child failed, cancelled if every child was, else succeeded; their
    webhook event and long-poll announcement as for any job. Locked after their children (the
    order every path takes), so two workers ending two children wait in turn, not on each other.
    """
    parents = lock_jobs(session, parent_ids)
    open_parents = [p for p in parents.values() if p.status not in TERMINAL_JOB]
    if not open_parents:
        return
    session.flush()
    statuses: dict[uuid.UUID, list[str]] = defaultdict(list)
    for parent_id, status in session.execute(
        select(Job.parent_id, Job.status).where(
            among(session, Job.parent_id, [p.id for p in open_parents])
        )
    ).tuples():
        statuses[parent_id].append(status)  # type: ignore[index]
    now, finished = utcnow(), []
    for parent in open_parents:
        children = statuses[parent.id]
        if not children or any(status not in TERMINAL_JOB for status in children):
            continue
        target = JobStatus.SUCCEEDED
        if all(status == JobStatus.FAILED for status in children):
            target = JobStatus.FAILED
            parent.error = "every task failed on every input; see each input's error"
        elif all(status == JobStatus.CANCELLED for status in children):
            target = JobStatus.CANCELLED
        parent.status = job_transition(parent.status, target)
        parent.finished_at = now
        deliveries.add_job_event(session, parent)
        finished.append(parent.id)
    announce_finished_many(session, finished)


def retire(item: JobItem) -> None:
    """An unfinished item of a job that is already over (cancelled) will never run."""
    item.status = item_transition(item.status, ItemStatus.CANCELLED)
    item.error = "its job was cancelled before it finished"
    item.leased_until = None


def _fail(item: JobItem, reason: str) -> None:
    item.status = item_transition(item.status, ItemStatus.FAILED)
    item.error = reason
    item.leased_until = None


def _result_row(claimed: ClaimedItem, output: Output) -> dict[str, Any]:
    prediction = output.prediction
    extra = {
        key: value
        for key, value in (
            ("scores", prediction.scores),
            ("embedding", prediction.embedding),
            ("entities", prediction.entities),  # [] is kept: no entity found is an answer
        )
        if value is not None
    }
    return {
        "item_id": claimed.id,
        "input_hash": claimed.input_hash,
        "model": output.model,
        "version": output.version,
        "tier": output.tier,
        "degraded": output.degraded,
        "cached": output.cached,
        "label": prediction.label,
        "score": prediction.score,
        "output": extra or None,
    }


def insert_cached_results(
    session: Session, outcomes: Sequence[tuple[Job, ClaimedItem, Output]]
) -> None:
    """Result rows of inputs answered from the cache at submit (see ``_insert_result_rows``),
    and their jobs' usage."""
    _insert_result_rows(session, outcomes, utcnow())
    usage.add_usage(session, usage.deltas((job.id, output, None) for job, _, output in outcomes))


def _insert_result_rows(
    session: Session, outcomes: Sequence[tuple[Job, ClaimedItem, Output]], created_at: datetime
) -> None:
    """One INSERT for every outcome, whatever its job. Callers hold the items' locks and pass
    only items that have no result yet; the unique item_id with DO NOTHING stays as the last
    guard."""
    rows = [
        {**_result_row(claimed, output), "job_id": job.id, "task": job.task}
        for job, claimed, output in outcomes
    ]
    shared = {"created_at": created_at}
    insert_rows(session, Result, rows, shared=shared, skip_conflicts_on=["item_id"])
