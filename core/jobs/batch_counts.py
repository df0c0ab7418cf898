"""A batch's request counts, kept in the transactions that finish its items, and the batch's
end once the last one is in.

Every writer that ends items (a worker recording results, a claim giving up, a release, the
sweeper, a cancel, an expiry) tallies what it ended per batch and calls ``apply`` before it
commits. ``apply`` runs one ``UPDATE … RETURNING`` per batch, after the writer's job and item
locks (the lock order every writer keeps: jobs, items, then batches in id order). The row lock
serialises the increments, so the writer whose increment makes ``completed + failed +
cancelled`` reach ``total`` is the one that ends the batch, exactly once.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db.models import Batch, Job, utcnow
from core.jobs.state import BatchStatus, ItemStatus
from core.webhooks import deliveries

# Which count an item's end goes to. An expired line is a failed one (its error says expired),
# as in the OpenAI Batch API.
_COUNT_OF = {
    ItemStatus.SUCCEEDED: "completed",
    ItemStatus.FAILED: "failed",
    ItemStatus.CANCELLED: "cancelled",
}


class Tally:
    """Items ended in this transaction, per batch; jobs outside batches are ignored."""

    def __init__(self) -> None:
        self._counts: dict[uuid.UUID, Counter[str]] = defaultdict(Counter)

    def add(self, job: Job, status: str, n: int = 1) -> None:
        if job.batch_id is not None and n:
            self._counts[job.batch_id][_COUNT_OF[ItemStatus(status)]] += n

    def add_for_batch(self, batch_id: uuid.UUID, status: str, n: int = 1) -> None:
        if n:
            self._counts[batch_id][_COUNT_OF[ItemStatus(status)]] += n

    def __bool__(self) -> bool:
        return bool(self._counts)

    def apply(self, session: Session) -> list[uuid.UUID]:
        """Add the tallies to the batches' counts; end the batches now complete. Returns the
        batches this touched (their dispatcher may have room now)."""
        touched = sorted(self._counts)
        for batch_id in touched:
            counts = self._counts[batch_id]
            row = session.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(
                    completed=Batch.completed + counts["completed"],
                    failed=Batch.failed + counts["failed"],
                    cancelled=Batch.cancelled + counts["cancelled"],
                )
                .returning(Batch.total, Batch.completed, Batch.failed, Batch.cancelled)
                .execution_options(synchronize_session=False)
            ).first()
            if row is not None and row.completed + row.failed + row.cancelled >= row.total:
                end_if_done(session, batch_id)
        self._counts.clear()
        return touched


def end_if_done(session: Session, batch_id: uuid.UUID) -> Batch | None:
    """End the batch if every line is in (the caller holds or has just taken its row lock)."""
    batch = session.scalars(
        select(Batch)
        .where(Batch.id == batch_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if batch is None or batch.status not in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
        return None
    if batch.completed + batch.failed + batch.cancelled < batch.total:
        return None
    now = utcnow()
    batch.finalizing_at = now
    if batch.status == BatchStatus.CANCELLING:
        batch.status = BatchStatus.CANCELLED
        batch.cancelled_at = now
    elif batch.completed == 0 and batch.failed > 0:
        batch.status = BatchStatus.FAILED  # not one line ran: each line's error says why
        batch.failed_at = now
    else:
        batch.status = BatchStatus.COMPLETED
        batch.completed_at = now
    deliveries.add_batch_event(session, batch)
    return batch
