"""One delivery of a run-items message: claim, infer, record — three short steps.

No transaction stays open while the model runs. A failed attempt releases the items with the
reason and dispatches them again through the outbox until the attempt cap fails them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from core.config import Settings
from core.db.session import Database
from core.inference.engine import InferenceEngine
from core.jobs import outbox
from core.jobs.lifecycle import ClaimedItem, claim_items, record_results, release_items
from core.telemetry.metrics import BATCH_SECONDS, ITEMS_FINISHED

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RunReport:
    claimed: int
    written: int
    retried: int


def run_items(
    db: Database,
    engine: InferenceEngine,
    settings: Settings,
    job_id: uuid.UUID,
    item_ids: Sequence[int],
) -> RunReport:
    with db.transaction() as session:
        claim = claim_items(
            session,
            job_id,
            item_ids,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
    if claim is None or not claim.items:
        log.info("nothing_to_claim", job_id=str(job_id), items=len(item_ids))
        return RunReport(0, 0, 0)
    started = time.perf_counter()
    try:
        outputs = engine.run(claim.task, [item.text for item in claim.items])
    except Exception as exc:  # every tier failed: release with the reason, retry up to the cap
        return _release(db, settings, claim.job_id, claim.priority, claim.items, repr(exc))
    BATCH_SECONDS.labels(claim.task).observe(time.perf_counter() - started)
    with db.transaction() as session:
        written = record_results(
            session, claim.job_id, list(zip(claim.items, outputs, strict=True))
        )
    for output in outputs:
        ITEMS_FINISHED.labels(claim.task, output.tier, "succeeded").inc()
    log.info(
        "batch_done",
        job_id=str(job_id),
        task=claim.task,
        items=len(outputs),
        written=written,
        seconds=round(time.perf_counter() - started, 4),
    )
    return RunReport(len(claim.items), written, 0)


def _release(
    db: Database,
    settings: Settings,
    job_id: uuid.UUID,
    priority: str,
    items: Sequence[ClaimedItem],
    error: str,
) -> RunReport:
    ids = [item.id for item in items]
    log.warning("batch_failed", job_id=str(job_id), items=len(ids), error=error)
    with db.transaction() as session:
        retry = release_items(session, job_id, ids, error, settings.max_attempts)
        if retry:
            outbox.add_run_items(
                session,
                str(job_id),
                retry,
                queue=priority,
                chunk_size=settings.chunk_size,
                request_id=None,
            )
    return RunReport(len(ids), 0, len(retry))
