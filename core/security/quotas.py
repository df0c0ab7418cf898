"""Quotas on work in flight: a tenant's pending inputs are the inputs of its queued and running
jobs (a batch's jobs included, dispatched or not). A submit that would take them past the
tenant's quota is refused whole with 429 (backpressure); Kafka ingest pauses instead.

Counted at the job's granularity from a partial index (``ix_jobs_tenant_pending``): a running
job counts all its inputs until it ends. The check runs in the submit's own transaction, so
concurrent submits of one tenant in several API processes can pass the quota by at most what
they submit at that moment: a soft limit, as backpressure needs, not an exact one.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import Job
from core.errors import QuotaExceeded
from core.jobs.state import JobStatus
from core.telemetry.metrics import QUOTA_REFUSED

PENDING = (JobStatus.QUEUED, JobStatus.RUNNING)
RETRY_AFTER_SECONDS = 10  # a guess the client can act on: work drains at the workers' pace


def pending_inputs(session: Session, tenant_ids: Iterable[int]) -> dict[int, int]:
    wanted = sorted(set(tenant_ids))
    if not wanted:
        return {}
    rows = session.execute(
        select(Job.tenant_id, func.coalesce(func.sum(Job.total_items), 0))
        .where(Job.tenant_id.in_(wanted), Job.status.in_(PENDING), Job.tasks.is_(None))
        .group_by(Job.tenant_id)
    )
    found = {tenant_id: int(total) for tenant_id, total in rows}
    return {tenant_id: found.get(tenant_id, 0) for tenant_id in wanted}


class PendingQuota:
    """One transaction's new work, counted against each tenant's quota as it is taken."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._pending: dict[int, int] = {}

    def preload(self, tenant_ids: Iterable[int]) -> None:
        missing = set(tenant_ids).difference(self._pending)
        self._pending.update(pending_inputs(self.session, missing))

    def take(self, tenant_id: int, inputs: int, limit: int | None) -> None:
        """Count ``inputs`` more for the tenant, or raise QuotaExceeded (nothing counted)."""
        if limit is None:
            return
        if tenant_id not in self._pending:
            self.preload([tenant_id])
        pending = self._pending[tenant_id]
        if pending + inputs > limit:
            QUOTA_REFUSED.inc()
            raise QuotaExceeded(
                f"this would make {pending + inputs:,} pending inputs, over your quota of "
                f"{limit:,} (INFERQ_MAX_PENDING_INPUTS_PER_TENANT); wait for work to finish "
                "and retry",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                pending_inputs=pending,
                max_pending_inputs=limit,
            )
        self._pending[tenant_id] = pending + inputs
