"""Submitting a job: validate, honour the idempotency key, write job + items + outbox in the
caller's transaction. Every door (HTTP, Kafka, files, CLI) comes through ``submit_job``."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from core.config import Settings
from core.db.bulk import insert_rows
from core.db.models import Job, JobItem, utcnow
from core.errors import IdempotencyConflict, InferqError, InvalidInput, QuotaExceeded
from core.inference.cache import RedisCache, lookup
from core.inference.engine import Output
from core.inference.preprocess import normalise
from core.inference.registry import get_task
from core.inference.versions import shipped_version
from core.jobs import outbox
from core.jobs.lifecycle import ClaimedItem, insert_cached_results
from core.jobs.presenters import output_out
from core.jobs.queries import ItemView, JobView
from core.jobs.state import ItemStatus, JobStatus
from core.jobs.validation import check_inputs, check_metadata, check_task, check_webhook_url
from core.rollout.state import current
from core.security.quotas import PendingQuota
from core.webhooks import deliveries
from schemas.webhooks import WebhookOut

PRIORITIES = ("interactive", "bulk")


@dataclass(frozen=True)
class JobRequest:
    task: str
    inputs: list[str]
    priority: str = "interactive"
    webhook_url: str | None = None
    metadata: dict[str, Any] | None = field(default=None)
    # Several tasks on every input: a parent job and one child job per task (see Job.tasks);
    # `task` is then their names joined by ",".
    tasks: tuple[str, ...] | None = None

    @classmethod
    def of_tasks(cls, tasks: Sequence[str], inputs: list[str], **options: Any) -> JobRequest:
        """One task (a plain job) or several (a parent job)."""
        if len(tasks) == 1:
            return cls(tasks[0], inputs, **options)
        return cls(",".join(tasks), inputs, tasks=tuple(tasks), **options)

    def fingerprint(self) -> str:
        fields: dict[str, Any] = {
            "task": self.task,
            "inputs": self.inputs,
            "priority": self.priority,
            "webhook_url": self.webhook_url,
            "metadata": self.metadata,
        }
        if self.tasks is not None:
            fields["tasks"] = list(self.tasks)
        canonical = json.dumps(fields, sort_keys=True, ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False when an earlier job with the same idempotency key was returned
    # The new job as written (read nothing back to answer); None for an earlier job.
    written: JobView | None = None


def input_hash(task: str, text: str) -> str:
    return hashlib.sha256(f"{task}\x00{normalise(text)}".encode()).hexdigest()


@dataclass(frozen=True)
class Submission:
    """One caller's submit: what ``submit_job`` takes, as a value ``submit_many`` can batch."""

    tenant_id: int
    request: JobRequest
    idempotency_key: str | None = None
    request_id: str | None = None
    job_id: uuid.UUID | None = None  # the new job's id (a caller may watch for it beforehand)
    # The tenant's quota of pending inputs (core.security.quotas); None: no quota.
    max_pending_inputs: int | None = None


@dataclass(frozen=True)
class _Checked:
    submission: Submission
    texts: list[str]
    fingerprint: str


def submit_job(
    session: Session,
    settings: Settings,
    *,
    tenant_id: int,
    request: JobRequest,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    job_id: uuid.UUID | None = None,
    max_pending_inputs: int | None = None,
    quota: PendingQuota | None = None,
) -> Submitted:
    """``job_id`` names the new job (a caller may watch for it before it exists); an earlier
    job returned for the same idempotency key keeps its own id. New work past the tenant's
    ``max_pending_inputs`` is refused (QuotaExceeded); an earlier job is returned regardless."""
    submission = Submission(
        tenant_id, request, idempotency_key, request_id, job_id, max_pending_inputs
    )
    checked = _check(submission, settings)
    quota = quota or PendingQuota(session)
    work = len(checked.texts) * len(request.tasks or (request.task,))
    if idempotency_key is None:
        quota.take(tenant_id, work, max_pending_inputs)
        return _created(_insert_one(session, settings, checked))
    earlier = _find_by_key(session, tenant_id, idempotency_key)
    if earlier is not None:
        return Submitted(_same_request(earlier, checked.fingerprint), created=False)
    quota.take(tenant_id, work, max_pending_inputs)
    # Only a key can collide with a concurrent request's row: the savepoint (two round trips)
    # that lets this transaction go on after losing that race is taken only when there is one.
    try:
        with session.begin_nested():
            written = _insert_one(session, settings, checked)
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its job.
        earlier = _find_by_key(session, tenant_id, idempotency_key)
        if earlier is None:
            raise
        return Submitted(_same_request(earlier, checked.fingerprint), created=False)
    return _created(written)


def submit_many(
    session: Session, settings: Settings, submissions: Sequence[Submission]
) -> list[Submitted | InferqError]:
    """Several callers' submits in the caller's one transaction, each answered as
    ``submit_job`` would answer it alone (a refused request is its error, in its place; the
    others go on). Those without an idempotency key are written together: one cache lookup
    and one INSERT each for jobs, items and outbox rows, whatever their number; a keyed one
    takes ``submit_job``'s path (the key lookup and its savepoint)."""
    outcomes: list[Submitted | InferqError | None] = [None] * len(submissions)
    batch: list[tuple[int, _Checked]] = []
    quota = PendingQuota(session)
    quota.preload({s.tenant_id for s in submissions if s.max_pending_inputs is not None})
    for position, submission in enumerate(submissions):
        try:
            if submission.idempotency_key is not None or submission.request.tasks:
                outcomes[position] = submit_job(
                    session,
                    settings,
                    tenant_id=submission.tenant_id,
                    request=submission.request,
                    idempotency_key=submission.idempotency_key,
                    request_id=submission.request_id,
                    job_id=submission.job_id,
                    max_pending_inputs=submission.max_pending_inputs,
                    quota=quota,
                )
            else:
                checked = _check(submission, settings)
                quota.take(submission.tenant_id, len(checked.texts), submission.max_pending_inputs)
                batch.append((position, checked))
        except (InvalidInput, IdempotencyConflict, QuotaExceeded) as exc:  # nothing written
            outcomes[position] = exc
    written = _insert_many(session, settings, [checked for _, checked in batch])
    for (position, _), view in zip(batch, written, strict=True):
        outcomes[position] = _created(view)
    return [outcome for outcome in outcomes if outcome is not None]


def _check(submission: Submission, settings: Settings) -> _Checked:
    request = submission.request
    for task in request.tasks or (request.task,):
        check_task(task)
    texts = check_inputs(request.inputs, settings)
    check_metadata(request.metadata)
    check_webhook_url(request.webhook_url, settings)
    if request.priority not in PRIORITIES:
        raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}")
    return _Checked(submission, texts, request.fingerprint())


def _created(view: JobView) -> Submitted:
    return Submitted(view.job, created=True, written=view)


def _insert_one(session: Session, settings: Settings, checked: _Checked) -> JobView:
    if checked.submission.request.tasks:
        return _insert_parent(session, settings, checked)
    return _insert_many(session, settings, [checked])[0]


def _insert_parent(session: Session, settings: Settings, checked: _Checked) -> JobView:
    """A job of several tasks: the parent row (no items), then one ordinary job per task
    pointing at it, written as any job is (cache answers, items, outbox). The children carry
    no key, webhook or metadata: the parent answers for them. If the cache answered every
    child, the parent is written finished too."""
    tasks = checked.submission.request.tasks or ()
    now = utcnow()
    row = _job_row(checked, answered=False, now=now)
    row.update(tasks=list(tasks), total_items=len(checked.texts) * len(tasks))
    insert_rows(session, Job, [row])
    parent = Job(**{_JOB_ATTRIBUTES.get(k, k): v for k, v in row.items()})
    make_transient_to_detached(parent)
    session.add(parent)
    request = checked.submission.request
    children = [
        _Checked(
            Submission(
                checked.submission.tenant_id,
                JobRequest(task, request.inputs, request.priority),
                request_id=checked.submission.request_id,
            ),
            checked.texts,
            checked.fingerprint,
        )
        for task in tasks
    ]
    views = _insert_many(session, settings, children, parent_id=parent.id)
    if all(view.job.status == JobStatus.SUCCEEDED for view in views):
        parent.status, parent.finished_at = JobStatus.SUCCEEDED, now
        deliveries.add_job_event(session, parent)
    webhook = WebhookOut(status="pending", attempts=0) if parent.webhook_url else None
    return JobView(parent, [], webhook, children=views)


def _insert_many(
    session: Session,
    settings: Settings,
    jobs: Sequence[_Checked],
    parent_id: uuid.UUID | None = None,
) -> list[JobView]:
    """Jobs, their items and their outbox rows, in one statement each. Inputs whose result is
    cached for the current primary model are inserted already succeeded, with their result: no
    message, no worker. A job whose every input is cached is written succeeded: nothing will
    run for it, and no one can be waiting on a job whose id has not been answered yet."""
    if not jobs:
        return []
    now = utcnow()
    hashes = [[input_hash(c.submission.request.task, text) for text in c.texts] for c in jobs]
    cached = _cached_by_task(session, settings, jobs, hashes)
    rows = [
        _job_row(
            checked, answered=all(d in cached[checked.submission.request.task] for d in hs), now=now
        )
        | {"parent_id": parent_id}
        for checked, hs in zip(jobs, hashes, strict=True)
    ]
    insert_rows(session, Job, rows)
    written = [Job(**{_JOB_ATTRIBUTES.get(k, k): v for k, v in row.items()}) for row in rows]
    for job in written:  # the rows as written, now the session's (no second INSERT)
        make_transient_to_detached(job)
        session.add(job)
    items = _insert_items(session, written, [c.texts for c in jobs], hashes, cached, now)
    served = [
        (job, item, cached[job.task][item.input_hash])
        for job, job_items in zip(written, items, strict=True)
        for item in job_items
        if item.input_hash in cached[job.task]
    ]
    insert_cached_results(session, served)
    runs: list[outbox.RunRequest] = []
    for job, job_items in zip(written, items, strict=True):
        if job.status == JobStatus.SUCCEEDED:
            deliveries.add_job_event(session, job)
            continue
        waiting = [item for item in job_items if item.input_hash not in cached[job.task]]
        tokens = [outbox.estimate_tokens(item.text) for item in waiting]
        ids = [item.id for item in waiting]
        runs.append(
            outbox.RunRequest(str(job.id), ids, job.task, job.priority, job.request_id, tokens)
        )
    outbox.add_run_items_many(session, runs, chunk_size=settings.chunk_size)
    return [
        _view(job, job_hashes, cached[job.task])
        for job, job_hashes in zip(written, hashes, strict=True)
    ]


# insert_rows takes column names; the model's attribute for the "metadata" column is metadata_.
_JOB_ATTRIBUTES = {"metadata": "metadata_"}


def _job_row(checked: _Checked, *, answered: bool, now: datetime) -> dict[str, Any]:
    submission, request = checked.submission, checked.submission.request
    return {
        "id": submission.job_id or uuid.uuid4(),
        "tenant_id": submission.tenant_id,
        "task": request.task,
        "status": JobStatus.SUCCEEDED if answered else JobStatus.QUEUED,
        "priority": request.priority,
        "idempotency_key": submission.idempotency_key,
        "request_hash": checked.fingerprint,
        "request_id": submission.request_id,
        "webhook_url": request.webhook_url,
        "metadata": request.metadata,
        "total_items": len(checked.texts),
        "error": None,
        "created_at": now,
        "updated_at": now,
        "finished_at": now if answered else None,
        "tasks": None,
        "parent_id": None,
    }


def _view(job: Job, hashes: list[str], cached: dict[str, Output]) -> JobView:
    views = [
        ItemView(index, ItemStatus.SUCCEEDED, None, output_out(index, output))
        if (output := cached.get(digest)) is not None
        else ItemView(index, ItemStatus.QUEUED, None, None)
        for index, digest in enumerate(hashes)
    ]
    webhook = WebhookOut(status="pending", attempts=0) if job.webhook_url else None
    return JobView(job, views, webhook)


def _insert_items(
    session: Session,
    jobs: Sequence[Job],
    texts: Sequence[list[str]],
    hashes: Sequence[list[str]],
    cached: dict[str, dict[str, Output]],
    now: datetime,
) -> list[list[ClaimedItem]]:
    """Every job's items in one INSERT; per job, in input order, with their new ids."""
    rows = [
        {
            "job_id": job.id,
            "index": index,
            "text": text,
            "input_hash": digest,
            "status": ItemStatus.SUCCEEDED if digest in cached[job.task] else ItemStatus.QUEUED,
            "dispatched_at": None if digest in cached[job.task] else now,
        }
        for job, job_texts, job_hashes in zip(jobs, texts, hashes, strict=True)
        for index, (text, digest) in enumerate(zip(job_texts, job_hashes, strict=True))
    ]
    returning = [JobItem.id, JobItem.job_id, JobItem.index]
    ids = {
        (job_id, index): item_id
        for item_id, job_id, index in insert_rows(session, JobItem, rows, returning=returning)
    }
    return [
        [
            ClaimedItem(ids[(job.id, i)], i, text, digest)
            for i, (text, digest) in enumerate(zip(job_texts, job_hashes, strict=True))
        ]
        for job, job_texts, job_hashes in zip(jobs, texts, hashes, strict=True)
    ]


def _cached_by_task(
    session: Session, settings: Settings, jobs: Sequence[_Checked], hashes: list[list[str]]
) -> dict[str, dict[str, Output]]:
    """One cache lookup per task for every input of these jobs."""
    wanted: dict[str, set[str]] = {}
    for checked, job_hashes in zip(jobs, hashes, strict=True):
        wanted.setdefault(checked.submission.request.task, set()).update(job_hashes)
    return {
        task: cached_outputs(session, settings, task, sorted(digests))
        for task, digests in wanted.items()
    }


def cached_outputs(
    session: Session, settings: Settings, task: str, hashes: list[str]
) -> dict[str, Output]:
    """Cached results of the version that serves each input now (the task's champion, or its
    canary for the inputs routed to it), by input hash."""
    primary = get_task(task).chain[0]
    rollout = current(session, task, max_age=settings.rollout_refresh_seconds)
    cache = RedisCache.from_settings(settings.resolved_cache_url, settings.cache_ttl_seconds)
    found: dict[str, Output] = {}
    for served_by, group in rollout.route(hashes, str).items():
        version = served_by or shipped_version(task)
        if version is None:  # an adapter that cannot tell its version without loading: no cache
            continue
        for digest, hit in lookup(session, cache, task, version, group).items():
            found[digest] = Output(
                hit.prediction, hit.model, hit.version, primary.tier, degraded=False, cached=True
            )
    return found


def _find_by_key(session: Session, tenant_id: int, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def _same_request(job: Job, fingerprint: str) -> Job:
    if job.request_hash != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body; "
            "use a new key for a different request"
        )
    return job
