"""Cancelling a job: what has not run is cancelled; what is running finishes but the job stays
cancelled (the state machine forbids cancelled -> succeeded)."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db.models import Job, JobItem, utcnow
from core.errors import NotFound
from core.jobs.finished import announce_finished
from core.jobs.lifecycle import lock_job, lock_jobs
from core.jobs.state import TERMINAL_JOB, ItemStatus, JobStatus, job_transition
from core.security import audit
from core.webhooks import deliveries


def cancel_job(session: Session, tenant_id: int, job_id: uuid.UUID, actor: str = "system") -> Job:
    found = session.execute(select(Job.tenant_id, Job.tasks).where(Job.id == job_id)).first()
    if found is not None and found.tenant_id == tenant_id and found.tasks:
        # A job of several tasks: its children first, then it (the order workers lock them in).
        children = list(session.scalars(select(Job.id).where(Job.parent_id == job_id)))
        for child in lock_jobs(session, children).values():
            if child.status not in TERMINAL_JOB:
                _cancel(session, child)
    job = lock_job(session, job_id)
    # A batch's jobs are cancelled with their batch (POST /v1/batches/{id}/cancel), which keeps
    # its counts, and a child with its parent; alone they are not found.
    if (
        job is None
        or job.tenant_id != tenant_id
        or job.batch_id is not None
        or job.parent_id is not None
    ):
        raise NotFound(f"job {job_id} not found")
    _cancel(session, job)
    audit.record(session, actor, "job.cancelled", tenant_id, target=str(job_id))
    return job


def _cancel(session: Session, job: Job) -> None:
    job.status = job_transition(job.status, JobStatus.CANCELLED)
    job.finished_at = utcnow()
    session.execute(
        update(JobItem)
        .where(JobItem.job_id == job.id, JobItem.status == ItemStatus.QUEUED)
        .values(status=ItemStatus.CANCELLED, error="cancelled before it ran", updated_at=utcnow())
    )
    deliveries.add_job_event(session, job)
    announce_finished(session, job.id)
