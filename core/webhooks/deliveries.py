"""The delivery of webhook events, with PostgreSQL as the truth for every attempt.

A job that ends with a ``webhook_url`` gets one ``webhook_deliveries`` row, written in the
transaction that finishes it (the outbox: nothing is sent before that commit). After commit a
task message asks the ``webhooks`` queue to send it. An attempt first claims the row under a
lease, sends with no transaction open, then records the outcome — only if its lease is still
the row's, so an attempt that outlived its lease or a redelivery cannot overwrite newer state.
Beat's dispatcher sends a message for every delivery that is due (the next attempt of a failing
one), whose message was lost with Redis, or whose attempt died with its worker.

Retries follow ``INFERQ_WEBHOOK_RETRY_SCHEDULE`` (Svix's by default) with ±10 % jitter; after the
last, the delivery is ``failed``. ``410 Gone`` and a blocked address fail it at once.

Each status an attempt leaves is counted on ``inferq_webhook_deliveries_total`` once it has
committed: ``delivered``, ``retrying`` (failing, another attempt scheduled) or ``failed``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import structlog
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.broker import get_celery, send_delivery
from core.config import Settings
from core.db.models import Batch, Job, WebhookDelivery, utcnow
from core.db.session import after_commit
from core.errors import InvalidTransition, NotFound
from core.jobs.state import TERMINAL_JOB, JobStatus
from core.telemetry.metrics import WEBHOOK_DELIVERIES
from schemas.webhooks import WebhookOut

log = structlog.get_logger(__name__)

JITTER = 0.1
LEASE_MARGIN_SECONDS = 5.0  # an attempt takes at most the timeout; twice it, and then this
DISPATCH_LIMIT = 500

JOB_EVENTS = {
    JobStatus.SUCCEEDED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # no attempt made yet in this series
    DELIVERED = "delivered"  # a 2xx came back
    FAILING = "failing"  # an attempt failed; another is scheduled
    FAILED = "failed"  # no more attempts: schedule exhausted, 410 Gone, or a blocked address


OPEN = (DeliveryStatus.PENDING, DeliveryStatus.FAILING)

# The outcome label of inferq_webhook_deliveries_total for each status an attempt can leave.
OUTCOMES = {
    DeliveryStatus.DELIVERED: "delivered",
    DeliveryStatus.FAILING: "retrying",
    DeliveryStatus.FAILED: "failed",
}


def add_job_event(session: Session, job: Job) -> None:
    """In the transaction that finishes ``job``: its event, if it has a webhook."""
    if job.webhook_url is None:
        return
    now = utcnow()
    row = WebhookDelivery(
        event_id=new_event_id(),
        tenant_id=job.tenant_id,
        job_id=job.id,
        event_type=JOB_EVENTS[JobStatus(job.status)],
        url=job.webhook_url,
        occurred_at=job.finished_at or now,
        next_attempt_at=now,
        dispatched_at=now,
    )
    session.add(row)
    session.flush()
    _send_after_commit(session, [row.id])


BATCH_EVENTS = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "cancelled": "batch.cancelled",
    "expired": "batch.expired",
}


def add_batch_event(session: Session, batch: Batch) -> None:
    """In the transaction that ends ``batch``: its event, if it has a webhook."""
    if batch.webhook_url is None:
        return
    now = utcnow()
    row = WebhookDelivery(
        event_id=new_event_id(),
        tenant_id=batch.tenant_id,
        batch_id=batch.id,
        event_type=BATCH_EVENTS[batch.status],
        url=batch.webhook_url,
        occurred_at=now,
        next_attempt_at=now,
        dispatched_at=now,
    )
    session.add(row)
    session.flush()
    _send_after_commit(session, [row.id])


def new_event_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def redeliver(session: Session, tenant_id: int, job_id: uuid.UUID) -> WebhookDelivery:
    """Send a finished job's event again: a new attempt series with the same ``webhook-id``."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"job {job_id} not found")
    if job.webhook_url is None:
        raise InvalidTransition(f"job {job_id} has no webhook_url; there is nothing to send")
    if job.status not in TERMINAL_JOB:
        raise InvalidTransition(f"job {job_id} is {job.status}; its event is sent when it finishes")
    row = _delivery_of(session, job_id, lock=True)
    if row is None:  # finished before it had a delivery row (written by an older version)
        add_job_event(session, job)
        row = _delivery_of(session, job_id, lock=False)
        assert row is not None
        return row
    now = utcnow()
    row.status = DeliveryStatus.PENDING
    row.attempts = 0
    row.next_attempt_at = now
    row.dispatched_at = now
    row.lease_token = row.leased_until = row.delivered_at = None
    session.flush()
    _send_after_commit(session, [row.id])
    return row


def dispatch_due(session: Session, settings: Settings, *, limit: int = DISPATCH_LIMIT) -> int:
    """Send a task message for every delivery that is due and has none in flight."""
    now = utcnow()
    resend_before = now - timedelta(seconds=settings.webhook_redispatch_after_seconds)
    rows = session.scalars(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.status.in_(list(OPEN)),
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until < now),
            or_(
                WebhookDelivery.dispatched_at.is_(None),
                WebhookDelivery.dispatched_at < resend_before,
            ),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        row.dispatched_at = now
    _send_after_commit(session, [row.id for row in rows])
    return len(rows)


@dataclass(frozen=True)
class Attempt:
    """One claimed attempt: what to send, and the lease that lets it record its outcome."""

    delivery_id: int
    lease_token: str
    number: int
    event_id: str
    event_type: str
    url: str
    tenant_id: int
    job_id: uuid.UUID | None
    occurred_at: datetime
    batch_id: uuid.UUID | None = None


def claim(session: Session, settings: Settings, delivery_id: int) -> Attempt | None:
    """Lease the delivery for one attempt, or None when it is not due or is already in flight
    (which makes a duplicate task message harmless)."""
    row = session.get(WebhookDelivery, delivery_id, with_for_update=True, populate_existing=True)
    now = utcnow()
    if row is None or row.status not in OPEN:
        return None
    if (row.next_attempt_at and row.next_attempt_at > now) or (
        row.leased_until is not None and row.leased_until > now
    ):
        return None
    schedule = settings.webhook_schedule
    if row.attempts >= len(schedule):  # its last attempt died with a worker
        _finish(row, DeliveryStatus.FAILED, row.last_status_code, _gave_up(row, "lost"))
        _count_after_commit(session, row.status)
        return None
    row.attempts += 1
    row.lease_token = uuid.uuid4().hex
    row.leased_until = now + timedelta(
        seconds=2 * settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS
    )
    row.dispatched_at = None
    row.last_attempt_at = now
    return Attempt(
        row.id,
        row.lease_token,
        row.attempts,
        row.event_id,
        row.event_type,
        row.url,
        row.tenant_id,
        row.job_id,
        row.occurred_at,
        row.batch_id,
    )


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None = None
    final: bool = False  # no point retrying: 410 Gone, a blocked address

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def record(
    session: Session,
    settings: Settings,
    attempt: Attempt,
    outcome: Outcome,
    *,
    jitter: Callable[[], float] = lambda: random.uniform(-JITTER, JITTER),
) -> str | None:
    """Write an attempt's outcome; returns the delivery's new status, or None when the attempt's
    lease is no longer the row's (its outcome is stale and changes nothing)."""
    row = session.get(
        WebhookDelivery, attempt.delivery_id, with_for_update=True, populate_existing=True
    )
    if row is None or row.lease_token != attempt.lease_token:
        return None
    schedule = settings.webhook_schedule
    if outcome.delivered:
        _finish(row, DeliveryStatus.DELIVERED, outcome.status_code, None)
        row.delivered_at = utcnow()
    elif outcome.final:
        _finish(row, DeliveryStatus.FAILED, outcome.status_code, outcome.error)
    elif row.attempts >= len(schedule):
        _finish(row, DeliveryStatus.FAILED, outcome.status_code, _gave_up(row, outcome.error))
    else:
        _finish(row, DeliveryStatus.FAILING, outcome.status_code, outcome.error)
        delay = schedule[row.attempts] * (1 + jitter())
        row.next_attempt_at = utcnow() + timedelta(seconds=delay)
    _count_after_commit(session, row.status)
    return row.status


def _count_after_commit(session: Session, status: str) -> None:
    """Counted once the status is durable: a rolled-back attempt is made again, not counted."""
    after_commit(session, WEBHOOK_DELIVERIES.labels(OUTCOMES[DeliveryStatus(status)]).inc)


def _finish(row: WebhookDelivery, status: str, code: int | None, error: str | None) -> None:
    row.status = status
    row.last_status_code = code
    row.last_error = error
    row.lease_token = row.leased_until = None
    row.next_attempt_at = None


def _gave_up(row: WebhookDelivery, last: str | None) -> str:
    return f"gave up after {row.attempts} attempts; last: {last or 'no response'}"


def webhook_out(session: Session, job: Job) -> WebhookOut | None:
    """The delivery state shown on a job: None without a webhook, pending until it ends."""
    if job.webhook_url is None:
        return None
    row = _delivery_of(session, job.id, lock=False)
    if row is None:
        return WebhookOut(status=DeliveryStatus.PENDING, attempts=0)
    return delivery_out(row)


def delivery_out(row: WebhookDelivery) -> WebhookOut:
    return WebhookOut(
        status=row.status,
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
    )


def _delivery_of(session: Session, job_id: uuid.UUID, *, lock: bool) -> WebhookDelivery | None:
    query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).first()


def _send_after_commit(session: Session, delivery_ids: list[int]) -> None:
    if delivery_ids:
        after_commit(session, lambda: send_messages(delivery_ids))


def send_messages(delivery_ids: list[int]) -> None:
    try:
        app = get_celery()
        for delivery_id in delivery_ids:
            send_delivery(app, delivery_id)
    except Exception as exc:  # the dispatcher sends them later; the commit stands
        log.warning("webhook_enqueue_failed", deliveries=delivery_ids, error=repr(exc))
