"""Submitting a job: validate, honour the idempotency key, write job + items + outbox in the
caller's transaction. Every door (HTTP, Kafka, files, CLI) comes through ``submit_job``."""

from __future__ import annotations

import hashlib
import json
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.config import Settings
from core.db.bulk import insert_rows
from core.db.models import Job, JobItem, utcnow
from core.errors import IdempotencyConflict, InvalidInput
from core.inference.cache import RedisCache, lookup
from core.inference.engine import Output
from core.inference.preprocess import normalise
from core.inference.registry import get_task, tier_version
from core.jobs import outbox
from core.jobs.lifecycle import ClaimedItem, insert_results
from core.jobs.presenters import output_out
from core.jobs.queries import ItemView, JobView
from core.jobs.state import ItemStatus, JobStatus
from core.jobs.validation import check_inputs, check_metadata, check_task, check_webhook_url
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

    def fingerprint(self) -> str:
        canonical = json.dumps(
            {
                "task": self.task,
                "inputs": self.inputs,
                "priority": self.priority,
                "webhook_url": self.webhook_url,
                "metadata": self.metadata,
            },
            sort_keys=True,
            ensure_ascii=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False when an earlier job with the same idempotency key was returned
    # The new job as written (read nothing back to answer); None for an earlier job.
    written: JobView | None = None


def input_hash(task: str, text: str) -> str:
    return hashlib.sha256(f"{task}\x00{normalise(text)}".encode()).hexdigest()


def submit_job(
    session: Session,
    settings: Settings,
    *,
    tenant_id: int,
    request: JobRequest,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    job_id: uuid.UUID | None = None,
) -> Submitted:
    """``job_id`` names the new job (a caller may watch for it before it exists); an earlier
    job returned for the same idempotency key keeps its own id."""
    check_task(request.task)
    texts = check_inputs(request.inputs, settings)
    check_metadata(request.metadata)
    check_webhook_url(request.webhook_url, settings)
    if request.priority not in PRIORITIES:
        raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}")
    fingerprint = request.fingerprint()
    if idempotency_key is not None:
        earlier = _find_by_key(session, tenant_id, idempotency_key)
        if earlier is not None:
            return Submitted(_same_request(earlier, fingerprint), created=False)
    # Only a key can collide with a concurrent request's row: the savepoint (two round trips)
    # that lets this transaction go on after losing that race is taken only when there is one.
    guard = session.begin_nested() if idempotency_key is not None else nullcontext()
    try:
        with guard:
            written = _insert(
                session,
                settings,
                tenant_id,
                request,
                texts,
                fingerprint,
                idempotency_key,
                request_id,
                job_id,
            )
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its job.
        earlier = _find_by_key(session, tenant_id, idempotency_key) if idempotency_key else None
        if earlier is None:
            raise
        return Submitted(_same_request(earlier, fingerprint), created=False)
    return Submitted(written.job, created=True, written=written)


def _insert(
    session: Session,
    settings: Settings,
    tenant_id: int,
    request: JobRequest,
    texts: list[str],
    fingerprint: str,
    idempotency_key: str | None,
    request_id: str | None,
    job_id: uuid.UUID | None,
) -> JobView:
    """The job, its items and their outbox rows. Inputs whose result is cached for the current
    primary model are inserted already succeeded, with their result: no message, no worker. A job
    whose every input is cached is written succeeded: nothing will run for it, and no one can be
    waiting on a job whose id has not been answered yet."""
    now = utcnow()
    hashes = [input_hash(request.task, text) for text in texts]
    cached = _cached_outputs(session, settings, request.task, hashes)
    answered = all(digest in cached for digest in hashes)
    job = Job(
        id=job_id or uuid.uuid4(),
        tenant_id=tenant_id,
        task=request.task,
        priority=request.priority,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        request_id=request_id,
        webhook_url=request.webhook_url,
        metadata_=request.metadata,
        total_items=len(texts),
        status=JobStatus.SUCCEEDED if answered else JobStatus.QUEUED,
        finished_at=now if answered else None,
    )
    session.add(job)
    session.flush()
    items = _insert_items(session, job, texts, hashes, cached, now)
    served = [(item, cached[item.input_hash]) for item in items if item.input_hash in cached]
    if served:
        insert_results(session, job, served)
    if answered:
        deliveries.add_job_event(session, job)
    waiting = [item for item in items if item.input_hash not in cached]
    if waiting:
        outbox.add_run_items(
            session,
            str(job.id),
            [item.id for item in waiting],
            task=request.task,
            tokens=[outbox.estimate_tokens(item.text) for item in waiting],
            queue=request.priority,
            chunk_size=settings.chunk_size,
            request_id=request_id,
        )
    views = [
        ItemView(index, ItemStatus.SUCCEEDED, None, output_out(index, output))
        if (output := cached.get(digest)) is not None
        else ItemView(index, ItemStatus.QUEUED, None, None)
        for index, digest in enumerate(hashes)
    ]
    webhook = WebhookOut(status="pending", attempts=0) if request.webhook_url else None
    return JobView(job, views, webhook)


def _insert_items(
    session: Session,
    job: Job,
    texts: list[str],
    hashes: list[str],
    cached: dict[str, Output],
    now: datetime,
) -> list[ClaimedItem]:
    rows = [
        {
            "index": index,
            "text": text,
            "input_hash": digest,
            "status": ItemStatus.SUCCEEDED if digest in cached else ItemStatus.QUEUED,
            "dispatched_at": None if digest in cached else now,
        }
        for index, (text, digest) in enumerate(zip(texts, hashes, strict=True))
    ]
    ids = [0] * len(rows)
    returning = [JobItem.id, JobItem.index]
    for item_id, index in insert_rows(
        session, JobItem, rows, shared={"job_id": job.id}, returning=returning
    ):
        ids[index] = item_id
    return [ClaimedItem(ids[i], i, texts[i], hashes[i]) for i in range(len(rows))]


def _cached_outputs(
    session: Session, settings: Settings, task: str, hashes: list[str]
) -> dict[str, Output]:
    """Cached results of the current primary model for these inputs, by input hash."""
    primary = get_task(task).chain[0]
    try:
        version = tier_version(task, primary.tier)
    except (ImportError, OSError):  # the API image has no model packages: workers check the cache
        version = None
    if version is None:  # an adapter that cannot tell its version without loading: no cache
        return {}
    cache = RedisCache.from_settings(settings.resolved_cache_url, settings.cache_ttl_seconds)
    return {
        digest: Output(
            hit.prediction, hit.model, hit.version, primary.tier, degraded=False, cached=True
        )
        for digest, hit in lookup(session, cache, task, version, hashes).items()
    }


def _find_by_key(session: Session, tenant_id: int, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def _same_request(job: Job, fingerprint: str) -> Job:
    if job.request_hash != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body; "
            "use a new key for a different request"
        )
    return job
