"""One micro-batch of run-items messages: claim, serve from cache, infer, record.

No transaction stays open while the model runs. Interactive work in the batch runs before bulk
work. Each input gets exactly one outcome: a result (upserted once), or a failure that releases
it with the reason and dispatches it again through the outbox until the attempt cap fails it.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy.orm import Session

from core.config import Settings
from core.db.session import Database, after_commit, retry_transient
from core.inference.cache import CachedResult, RedisCache, lookup
from core.inference.engine import Failure, InferenceEngine, Outcome, Output
from core.jobs import batches, outbox, usage
from core.jobs.lifecycle import Claim, ClaimedItem, claim_many, record_many, release_items
from core.rollout import serving
from core.rollout.state import Rollout, current_in
from core.telemetry import drift, gpu
from core.telemetry.metrics import (
    BATCH_ITEMS,
    BATCH_SECONDS,
    ITEMS_FINISHED,
    MODEL_SECONDS,
    WORKER_BUSY_SECONDS,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One broker message: a chunk of one job's items."""

    job_id: uuid.UUID
    item_ids: list[int]
    request_id: str | None = None


@dataclass(frozen=True)
class Worker:
    """What a worker process brings to a batch."""

    database: Database
    engine: InferenceEngine
    settings: Settings
    cache: RedisCache | None = None


@dataclass(frozen=True)
class RunReport:
    claimed: int
    written: int
    cached: int
    retried: int
    model_seconds: float = 0.0  # wall time of the batch's model calls


@dataclass
class _Resolved:
    """What the model calls of a batch gave: outcomes and each model-run item's share of its
    call (both by item id), and the calls' wall time."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    shares: dict[int, usage.ModelShare] = field(default_factory=dict)
    seconds: float = 0.0

    def update(self, other: _Resolved) -> None:
        self.outcomes.update(other.outcomes)
        self.shares.update(other.shares)
        self.seconds += other.seconds


def run_items(worker: Worker, job_id: uuid.UUID, item_ids: Sequence[int]) -> RunReport:
    return run_batch(worker, [Delivery(job_id, list(item_ids))])


def run_batch(worker: Worker, deliveries: Sequence[Delivery]) -> RunReport:
    # The first batch of a pool process starts its GPU sampler (after the fork; none on CPU).
    gpu.start_sampling()
    started = time.perf_counter()
    try:
        return _run_batch(worker, deliveries)
    finally:
        WORKER_BUSY_SECONDS.inc(time.perf_counter() - started)


def _run_batch(worker: Worker, deliveries: Sequence[Delivery]) -> RunReport:
    claims = retry_transient(lambda: _claim(worker, deliveries))
    if not claims:
        return RunReport(0, 0, 0, 0)
    started = time.perf_counter()
    resolved = _Resolved()
    # Interactive claims first: within a batch they reach the model before bulk work.
    for priority in ("interactive", "bulk"):
        by_task: dict[str, list[ClaimedItem]] = defaultdict(list)
        for claim in claims:
            if claim.priority == priority:
                by_task[claim.task].extend(claim.items)
        for task, items in by_task.items():
            resolved.update(_resolve(worker, task, items))
    report = retry_transient(lambda: _record(worker, claims, resolved))
    drift.observe(worker.settings, claims, resolved.outcomes)  # after the commit: served
    serving.after_batch(worker, claims, resolved.outcomes, resolved.shares)  # shadow, stats
    finished_in = sorted({claim.batch_id for claim in claims if claim.batch_id is not None})
    if finished_in:  # their batches have room for more jobs now
        retry_transient(lambda: _top_up(worker, finished_in))
    claimed = sum(len(claim.items) for claim in claims)
    BATCH_ITEMS.observe(claimed)
    log.info(
        "batch_done",
        jobs=len(claims),
        items=claimed,
        written=report.written,
        cached=report.cached,
        retried=report.retried,
        seconds=round(time.perf_counter() - started, 4),
    )
    return report


def _top_up(worker: Worker, batch_ids: list[uuid.UUID]) -> None:
    with worker.database.transaction() as session:
        batches.dispatch(session, worker.settings, batch_ids)


def _claim(worker: Worker, deliveries: Sequence[Delivery]) -> list[Claim]:
    settings = worker.settings
    # One claim per job, however many of its chunks the batch holds, and one set of statements
    # for all the jobs of the batch (often hundreds of single-input jobs).
    by_job: dict[uuid.UUID, list[int]] = defaultdict(list)
    for delivery in deliveries:
        by_job[delivery.job_id].extend(delivery.item_ids)
    with worker.database.transaction() as session:
        claims = claim_many(
            session,
            by_job,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
    return [claims[job_id] for job_id in sorted(claims) if claims[job_id].items]


def _resolve(worker: Worker, task: str, items: list[ClaimedItem]) -> _Resolved:
    """Outcomes by item id, each input served by the version its task's rollout routes it to
    (the champion, or the canary for the inputs whose hash falls in its share)."""
    rollout = _rollout(worker, task)
    resolved = _Resolved()
    for version, group in rollout.route(items, lambda item: item.input_hash).items():
        resolved.update(_resolve_version(worker, task, version, group))
    return resolved


def _rollout(worker: Worker, task: str) -> Rollout:
    rollout = current_in(worker.database, task, max_age=worker.settings.rollout_refresh_seconds)
    worker.engine.retain(task, rollout.named_versions())  # a version no longer named is unloaded
    return rollout


def _resolve_version(
    worker: Worker, task: str, served_by: str | None, items: list[ClaimedItem]
) -> _Resolved:
    """Cache hits first (L1 Redis, then L3 stored results), then the fallback chain for the
    rest, its primary tier being `served_by` (None: the shipped artefact). The cache is skipped
    when the primary tier's version is unknown (it cannot load here and its files do not
    tell)."""
    version = served_by or worker.engine.primary_version(task)
    hashes = [item.input_hash for item in items]
    hits = _cached(worker, task, version, hashes) if version is not None else {}
    outcomes: dict[int, Outcome] = {}
    misses: list[ClaimedItem] = []
    for item in items:
        hit = hits.get(item.input_hash)
        if hit is None:
            misses.append(item)
        else:
            outcomes[item.id] = Output(
                hit.prediction, hit.model, hit.version, "primary", degraded=False, cached=True
            )
    if not misses:
        return _Resolved(outcomes)
    started = time.perf_counter()
    results = worker.engine.run(task, [item.text for item in misses], version=served_by)
    seconds = time.perf_counter() - started
    BATCH_SECONDS.labels(task).observe(seconds)
    outcomes.update(zip((item.id for item in misses), results, strict=True))
    tokens = [outbox.estimate_tokens(item.text) for item in misses]
    parts = usage.shares(seconds, tokens, gpu=gpu.on_gpu(worker.engine.device))
    _count_model_seconds(task, results, parts)
    return _Resolved(outcomes, {item.id: p for item, p in zip(misses, parts, strict=True)}, seconds)


def _count_model_seconds(
    task: str, results: Sequence[Outcome], parts: Sequence[usage.ModelShare]
) -> None:
    """The call's wall time under the tier that served each input, by its share ("none":
    the input failed): the engine does not say how long each tier took."""
    by_tier: dict[str, float] = defaultdict(float)
    for outcome, part in zip(results, parts, strict=True):
        by_tier[outcome.tier if isinstance(outcome, Output) else "none"] += part.seconds
    for tier, seconds in by_tier.items():
        MODEL_SECONDS.labels(task, tier).inc(seconds)


def _cached(worker: Worker, task: str, version: str, hashes: list[str]) -> dict[str, CachedResult]:
    with worker.database.read() as session:
        return lookup(session, worker.cache, task, version, hashes)


def _record(worker: Worker, claims: list[Claim], resolved: _Resolved) -> RunReport:
    settings = worker.settings
    outcomes = resolved.outcomes
    cached = retried = 0
    fresh: dict[str, list[tuple[str, CachedResult]]] = defaultdict(list)
    with worker.database.transaction() as session:
        done: dict[uuid.UUID, list[tuple[ClaimedItem, Output]]] = {}
        for claim in claims:
            done[claim.job_id] = [
                (item, o) for item in claim.items if isinstance(o := outcomes[item.id], Output)
            ]
            for tier, count in Counter(output.tier for _, output in done[claim.job_id]).items():
                ITEMS_FINISHED.labels(claim.task, tier, "succeeded").inc(count)
            for item, output in done[claim.job_id]:
                cached += output.cached
                if output.tier == "primary" and not output.cached:
                    fresh[claim.task].append(
                        (
                            item.input_hash,
                            CachedResult(output.model, output.version, output.prediction),
                        )
                    )
        written = sum(record_many(session, done, resolved.shares).values())
        for claim in sorted(claims, key=lambda c: c.job_id):
            failed = {
                item.id: o for item in claim.items if isinstance(o := outcomes[item.id], Failure)
            }
            retried += _release(session, settings, claim, failed)
        if worker.cache is not None and fresh:
            after_commit(session, _fill_l1(worker.cache, fresh))
    claimed = sum(len(c.items) for c in claims)
    return RunReport(claimed, written, cached, retried, resolved.seconds)


def _fill_l1(
    cache: RedisCache, fresh: dict[str, list[tuple[str, CachedResult]]]
) -> Callable[[], None]:
    def fill() -> None:
        for task, entries in fresh.items():
            cache.put_many(task, entries)

    return fill


def _release(session: Session, settings: Settings, claim: Claim, failed: dict[int, Failure]) -> int:
    if not failed:
        return 0
    retry: list[int] = []
    for failure in set(failed.values()):
        ids = [item_id for item_id, f in failed.items() if f == failure]
        retry += release_items(
            session, claim.job_id, ids, failure.reason, settings.max_attempts, final=failure.final
        )
    for item_id in failed:
        if item_id not in retry:
            ITEMS_FINISHED.labels(claim.task, "none", "failed").inc()
    if retry:
        outbox.add_run_items(
            session,
            str(claim.job_id),
            retry,
            task=claim.task,
            queue=claim.priority,
            chunk_size=settings.chunk_size,
            request_id=None,
        )
    log.warning("items_released", job_id=str(claim.job_id), failed=len(failed), retry=len(retry))
    return len(retry)
