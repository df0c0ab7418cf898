"""A batch's request counts, kept in the transactions that finish its items, and the batch's
end once the last one is in.

Every writer that ends items (a worker recording results, a claim giving up, a release, the
sweeper, a cancel, an expiry) tallies what it ended per batch and calls ``apply`` before it
commits. ``apply`` runs one ``UPDATE … RETURNING`` per batch, after the writer's job and item
locks (the lock order every writer keeps: jobs, items, then batches in id order). The row lock
serialises the increments, so the writer whose increment makes ``completed + failed +
cancelled`` reach ``total`` is the one that ends the batch, exactly once.

A batch of several tasks (a parent with one child batch per task, no lines of its own) ends in
the transaction that ends its last child: ``settle_parents`` runs after every child row the
transaction locks (children before parents, the order every path keeps), and the parent's row
lock serialises two transactions ending its last two children.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db.models import Batch, Job, utcnow
from core.jobs.state import TERMINAL_BATCH, BatchStatus, ItemStatus
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

    def apply(self, session: Session, *, settle: bool = True) -> list[uuid.UUID]:
        """Add the tallies to the batches' counts; end the batches now complete, and their
        parents whose last child that was (``settle=False``: a caller that locks more children
        after this settles the parents itself, last). Returns the batches this touched (their
        dispatcher may have room now)."""
        touched = sorted(self._counts)
        parents: set[uuid.UUID] = set()
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
                ended = end_if_done(session, batch_id)
                if ended is not None and ended.parent_id is not None:
                    parents.add(ended.parent_id)
        if settle:
            settle_parents(session, parents)  # after every child row: children before parents
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


_OPEN = (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING)


def settle_parents(session: Session, parent_ids: Iterable[uuid.UUID]) -> None:
    """End the batches of several tasks whose last child has ended (in this transaction):
    cancelled if the parent was being cancelled or every child was, expired if a child expired
    (they share one window), failed if every child failed, else completed; with the parent's
    webhook event. Call after every child row the transaction locks."""
    for parent_id in sorted(set(parent_ids)):
        parent = session.scalars(
            select(Batch)
            .where(Batch.id == parent_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()
        if parent is None or parent.status not in _OPEN:
            continue
        session.flush()
        children = list(session.scalars(select(Batch.status).where(Batch.parent_id == parent_id)))
        if not children or any(status not in TERMINAL_BATCH for status in children):
            continue
        _end_parent(parent, children)
        deliveries.add_batch_event(session, parent)


def _end_parent(parent: Batch, children: list[str]) -> None:
    now = utcnow()
    parent.finalizing_at = now
    if parent.status == BatchStatus.CANCELLING or all(
        status == BatchStatus.CANCELLED for status in children
    ):
        parent.status, parent.cancelled_at = BatchStatus.CANCELLED, now
    elif BatchStatus.EXPIRED in children:
        parent.status, parent.expired_at = BatchStatus.EXPIRED, now
    elif all(status == BatchStatus.FAILED for status in children):
        parent.status, parent.failed_at = BatchStatus.FAILED, now
    else:
        parent.status, parent.completed_at = BatchStatus.COMPLETED, now


def children_counts(session: Session, parent_id: uuid.UUID) -> tuple[int, int, int, int]:
    """(total, completed, failed, cancelled) summed over a parent's children: over (line, task)
    pairs."""
    row = session.execute(
        select(
            func.coalesce(func.sum(Batch.total), 0),
            func.coalesce(func.sum(Batch.completed), 0),
            func.coalesce(func.sum(Batch.failed), 0),
            func.coalesce(func.sum(Batch.cancelled), 0),
        ).where(Batch.parent_id == parent_id)
    ).one()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])
