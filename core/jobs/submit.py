"""Submitting a job: validate, honour the idempotency key, write job + items + outbox in the
caller's transaction. Every door (HTTP, Kafka, files, CLI) comes through ``submit_job``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.config import Settings
from core.db.models import Job, JobItem, utcnow
from core.errors import IdempotencyConflict, InvalidInput
from core.inference.cache import RedisCache, lookup
from core.inference.engine import Output
from core.inference.preprocess import normalise
from core.inference.registry import get_task, tier_version
from core.jobs import outbox
from core.jobs.lifecycle import ClaimedItem, record_results
from core.jobs.validation import check_inputs, check_metadata, check_task, check_webhook_url

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
) -> Submitted:
    check_task(request.task)
    texts = check_inputs(request.inputs, settings)
    check_metadata(request.metadata)
    check_webhook_url(request.webhook_url)
    if request.priority not in PRIORITIES:
        raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}")
    fingerprint = request.fingerprint()
    if idempotency_key is not None:
        earlier = _find_by_key(session, tenant_id, idempotency_key)
        if earlier is not None:
            return Submitted(_same_request(earlier, fingerprint), created=False)
    try:
        with session.begin_nested():
            job = _insert(
                session,
                settings,
                tenant_id,
                request,
                texts,
                fingerprint,
                idempotency_key,
                request_id,
            )
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its job.
        earlier = _find_by_key(session, tenant_id, idempotency_key) if idempotency_key else None
        if earlier is None:
            raise
        return Submitted(_same_request(earlier, fingerprint), created=False)
    return Submitted(job, created=True)


def _insert(
    session: Session,
    settings: Settings,
    tenant_id: int,
    request: JobRequest,
    texts: list[str],
    fingerprint: str,
    idempotency_key: str | None,
    request_id: str | None,
) -> Job:
    now = utcnow()
    job = Job(
        tenant_id=tenant_id,
        task=request.task,
        priority=request.priority,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        request_id=request_id,
        webhook_url=request.webhook_url,
        metadata_=request.metadata,
        total_items=len(texts),
    )
    job.items = [
        JobItem(index=i, text=text, input_hash=input_hash(request.task, text), dispatched_at=now)
        for i, text in enumerate(texts)
    ]
    session.add(job)
    session.flush()
    waiting = _serve_from_cache(session, settings, job)
    if not waiting:
        return job
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
    return job


def _serve_from_cache(session: Session, settings: Settings, job: Job) -> list[JobItem]:
    """Finish the items whose result is cached for the current primary model; no message is
    sent for them. Returns the items that still need a worker."""
    primary = get_task(job.task).chain[0]
    version = tier_version(job.task, primary.tier)
    if version is None:
        return list(job.items)
    cache = RedisCache.from_settings(settings.resolved_cache_url, settings.cache_ttl_seconds)
    hits = lookup(session, cache, job.task, version, [item.input_hash for item in job.items])
    done = [
        (
            ClaimedItem(item.id, item.index, item.text, item.input_hash),
            Output(
                hit.prediction, hit.model, hit.version, primary.tier, degraded=False, cached=True
            ),
        )
        for item in job.items
        if (hit := hits.get(item.input_hash)) is not None
    ]
    if done:
        record_results(session, job.id, done)
    return [item for item in job.items if item.input_hash not in hits]


def _find_by_key(session: Session, tenant_id: int, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def _same_request(job: Job, fingerprint: str) -> Job:
    if job.request_hash != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body; "
            "use a new key for a different request"
        )
    return job
