"""The job and item state machines. Every status change goes through ``transition``.

queued -> running -> succeeded | failed | cancelled; terminal states never change again, so a
cancelled job can never become succeeded, however late a worker finishes.
"""

from __future__ import annotations

from enum import StrEnum

from core.errors import InvalidTransition


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ItemStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_JOB = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
TERMINAL_ITEM = frozenset({ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED})

_JOB_MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
}

_ITEM_MOVES: dict[ItemStatus, frozenset[ItemStatus]] = {
    # queued -> succeeded/failed: a cached result or a poison input may finish an item unclaimed.
    ItemStatus.QUEUED: frozenset(
        {ItemStatus.RUNNING, ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED}
    ),
    # running -> queued: the lease expired or the attempt failed and will be retried;
    # running -> cancelled: it would be retried, but its job was cancelled meanwhile.
    ItemStatus.RUNNING: frozenset(
        {
            ItemStatus.QUEUED,
            ItemStatus.RUNNING,
            ItemStatus.SUCCEEDED,
            ItemStatus.FAILED,
            ItemStatus.CANCELLED,
        }
    ),
}


def can_move_job(current: str, target: JobStatus) -> bool:
    return target in _JOB_MOVES.get(JobStatus(current), frozenset())


def job_transition(current: str, target: JobStatus) -> JobStatus:
    if not can_move_job(current, target):
        raise InvalidTransition(f"a job that is {current} cannot become {target}")
    return target


def can_move_item(current: str, target: ItemStatus) -> bool:
    return target in _ITEM_MOVES.get(ItemStatus(current), frozenset())


def item_transition(current: str, target: ItemStatus) -> ItemStatus:
    if not can_move_item(current, target):
        raise InvalidTransition(f"an item that is {current} cannot become {target}")
    return target


def settled_job_status(item_statuses: list[str]) -> JobStatus | None:
    """The status a job takes once all its items are terminal, or None while work remains.

    A job fails only when every input failed; partial failures are reported per input.
    """
    if any(ItemStatus(s) not in TERMINAL_ITEM for s in item_statuses):
        return None
    if item_statuses and all(s == ItemStatus.FAILED for s in item_statuses):
        return JobStatus.FAILED
    return JobStatus.SUCCEEDED


class BatchStatus(StrEnum):
    """The OpenAI Batch API's statuses. ``validating`` while the upload is written (that
    transaction is the only one that sees it), ``finalizing`` for the instant between the last
    line finishing and the batch's final status, both in one transaction."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL_BATCH = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED}
)
