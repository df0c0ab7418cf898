"""Jobs and results as the wire shapes every door returns (HTTP responses, Kafka result records,
webhook events)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from core.db.models import Job, Result
from core.inference.engine import Output
from core.jobs.state import ItemStatus
from core.jobs.usage import job_usage, summed
from schemas.jobs import (
    Counts,
    EntityOut,
    ItemError,
    JobOut,
    JobSummary,
    MultiResultOut,
    ResultOut,
)

if TYPE_CHECKING:
    from core.jobs.queries import JobView


class StoredResult(Protocol):
    """A result row: the ORM object, or a row selected with the same column names."""

    @property
    def label(self) -> str | None: ...
    @property
    def score(self) -> float | None: ...
    @property
    def output(self) -> dict[str, Any] | None: ...
    @property
    def model(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def tier(self) -> str: ...
    @property
    def degraded(self) -> bool: ...
    @property
    def cached(self) -> bool: ...


# The columns of a stored result that result_out() reads, for queries that select them.
RESULT_COLUMNS = (
    Result.label,
    Result.score,
    Result.output,
    Result.model,
    Result.version,
    Result.tier,
    Result.degraded,
    Result.cached,
)


def result_out(index: int, result: StoredResult) -> ResultOut:
    extra = result.output or {}
    return ResultOut(
        index=index,
        label=result.label,
        score=result.score,
        scores=extra.get("scores"),
        embedding=extra.get("embedding"),
        entities=_entities(extra.get("entities")),
        model=result.model,
        version=result.version,
        tier=result.tier,
        degraded=result.degraded,
        cached=result.cached,
    )


def output_out(index: int, output: Output) -> ResultOut:
    """A result as the engine or the cache produced it, before it is read back."""
    prediction = output.prediction
    return ResultOut(
        index=index,
        label=prediction.label,
        score=prediction.score,
        scores=prediction.scores,
        embedding=prediction.embedding,
        entities=_entities(prediction.entities),
        model=output.model,
        version=output.version,
        tier=output.tier,
        degraded=output.degraded,
        cached=output.cached,
    )


def _entities(entities: list[dict[str, Any]] | None) -> list[EntityOut] | None:
    return None if entities is None else [EntityOut.model_validate(e) for e in entities]


def job_summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        task=job.task,
        tasks=job.tasks,
        status=job.status,
        priority=job.priority,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        total_items=job.total_items,
        metadata=job.metadata_,
    )


def job_out(view: JobView) -> JobOut:
    if view.job.tasks:
        return _parent_out(view)
    counts = view.counts
    done = sum(
        counts.get(s, 0) for s in (ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED)
    )
    return JobOut(
        **job_summary(view.job).model_dump(),
        counts=Counts(
            total=view.job.total_items,
            succeeded=counts.get(ItemStatus.SUCCEEDED, 0),
            failed=counts.get(ItemStatus.FAILED, 0),
            cancelled=counts.get(ItemStatus.CANCELLED, 0),
            pending=view.job.total_items - done,
        ),
        results=[item.result for item in view.items if item.result is not None],
        errors=[
            ItemError(index=item.index, status=item.status, error=item.error)
            for item in view.items
            if item.status in (ItemStatus.FAILED, ItemStatus.CANCELLED)
        ],
        usage=job_usage(view.job, (item.result for item in view.items)),
        webhook=view.webhook,
    )


def _parent_out(view: JobView) -> JobOut:
    """A job of several tasks: counts over every (input, task), results[i].tasks[name], each
    error with its task, usage summed over the children. Queued until its last child ends
    (then its own stored status), running once any child has started."""
    items = [(child.job.task, item) for child in view.children for item in child.items]
    statuses = [item.status for _, item in items]
    done = sum(
        s in (ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED) for s in statuses
    )
    by_index: dict[int, dict[str, ResultOut]] = {}
    for task, item in items:
        if item.result is not None:
            by_index.setdefault(item.index, {})[task] = item.result
    summary = job_summary(view.job)
    if summary.status == "queued" and any(child.job.status != "queued" for child in view.children):
        summary.status = "running"
    return JobOut(
        **summary.model_dump(),
        counts=Counts(
            total=view.job.total_items,
            succeeded=statuses.count(ItemStatus.SUCCEEDED),
            failed=statuses.count(ItemStatus.FAILED),
            cancelled=statuses.count(ItemStatus.CANCELLED),
            pending=view.job.total_items - done,
        ),
        results=[
            MultiResultOut(index=index, tasks=results)
            for index, results in sorted(by_index.items())
        ],
        errors=[
            ItemError(index=item.index, status=item.status, error=item.error, task=task)
            for task, item in items
            if item.status in (ItemStatus.FAILED, ItemStatus.CANCELLED)
        ],
        usage=summed(
            job_usage(child.job, (i.result for i in child.items)) for child in view.children
        ),
        webhook=view.webhook,
    )
