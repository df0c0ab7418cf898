"""Reading jobs back: one job with its per-input results, or a tenant's jobs a page at a time."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session, selectinload

from core.db.models import Job, JobItem
from core.errors import InvalidInput, NotFound
from core.jobs.state import JobStatus


@dataclass(frozen=True)
class JobView:
    job: Job
    counts: dict[str, int]
    items: list[JobItem]


def get_job(
    session: Session, tenant_id: int, job_id: uuid.UUID, *, with_items: bool = True
) -> JobView:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"job {job_id} not found")
    rows = session.execute(
        select(JobItem.status, func.count())
        .where(JobItem.job_id == job_id)
        .group_by(JobItem.status)
    ).tuples()
    counts = {status: count for status, count in rows}
    items: list[JobItem] = []
    if with_items:
        items = list(
            session.scalars(
                select(JobItem)
                .where(JobItem.job_id == job_id)
                .order_by(JobItem.index)
                .options(selectinload(JobItem.result))
                .execution_options(populate_existing=True)
            )
        )
    return JobView(job, counts, items)


def job_status(session: Session, tenant_id: int, job_id: uuid.UUID) -> str:
    row = session.execute(select(Job.tenant_id, Job.status).where(Job.id == job_id)).first()
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"job {job_id} not found")
    return str(row.status)


def list_jobs(
    session: Session,
    tenant_id: int,
    *,
    status: JobStatus | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created_at, job_id))
    jobs = list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    )
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|")
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not valid; pass the next_cursor of a previous page") from exc
