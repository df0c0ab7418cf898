"""Map core's job views onto the wire schemas."""

from __future__ import annotations

from core.db.models import Job
from core.jobs.queries import JobView
from core.jobs.state import ItemStatus
from schemas.jobs import Counts, ItemError, JobOut, JobSummary


def job_summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        task=job.task,
        status=job.status,
        priority=job.priority,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        total_items=job.total_items,
        metadata=job.metadata_,
    )


def job_out(view: JobView) -> JobOut:
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
    )
