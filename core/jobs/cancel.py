"""Cancelling a job: what has not run is cancelled; what is running finishes but the job stays
cancelled (the state machine forbids cancelled -> succeeded)."""

from __future__ import annotations

import uuid

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.db.models import Job, JobItem, utcnow
from core.errors import NotFound
from core.jobs.finished import announce_finished
from core.jobs.lifecycle import lock_job
from core.jobs.state import ItemStatus, JobStatus, job_transition
from core.security import audit
from core.webhooks import deliveries


def cancel_job(session: Session, tenant_id: int, job_id: uuid.UUID, actor: str = "system") -> Job:
    job = lock_job(session, job_id)
    # A batch's jobs are cancelled with their batch (POST /v1/batches/{id}/cancel), which keeps
    # its counts; alone they are not found.
    if job is None or job.tenant_id != tenant_id or job.batch_id is not None:
        raise NotFound(f"job {job_id} not found")
    job.status = job_transition(job.status, JobStatus.CANCELLED)
    job.finished_at = utcnow()
    session.execute(
        update(JobItem)
        .where(JobItem.job_id == job_id, JobItem.status == ItemStatus.QUEUED)
        .values(status=ItemStatus.CANCELLED, error="cancelled before it ran", updated_at=utcnow())
    )
    deliveries.add_job_event(session, job)
    announce_finished(session, job_id)
    audit.record(session, actor, "job.cancelled", tenant_id, target=str(job_id))
    return job
