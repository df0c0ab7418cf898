"""One delivery attempt: claim, build and sign the event, POST it, record the outcome.

No transaction is open while the receiver is being waited on. Success is a 2xx within
``INFERQ_WEBHOOK_TIMEOUT_SECONDS``; anything else fails the attempt, a 3xx included (redirects
are never followed). At most ``INFERQ_WEBHOOK_MAX_RESPONSE_BYTES`` of a response are read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

import httpx
import structlog

from core.config import Settings
from core.db.session import Database
from core.errors import NotConfigured
from core.jobs.presenters import job_out
from core.jobs.queries import get_job
from core.telemetry.metrics import WEBHOOK_ATTEMPT_SECONDS, WEBHOOK_ATTEMPTS
from core.webhooks import deliveries
from core.webhooks.deliveries import Attempt, Outcome
from core.webhooks.guard import BlockedAddress, GuardedTransport, UrlGuard, parse_networks
from core.webhooks.signing import SecretBox, signature_header, signing_secrets
from schemas.webhooks import WebhookEvent

log = structlog.get_logger(__name__)

GONE = 410


@lru_cache(maxsize=1)
def user_agent() -> str:
    try:
        return f"inferq-webhooks/{version('inferq')}"
    except PackageNotFoundError:
        return "inferq-webhooks/unknown"


@dataclass(frozen=True)
class Message:
    """What goes on the wire for one attempt."""

    body: bytes
    headers: dict[str, str]


def deliver(
    database: Database,
    settings: Settings,
    delivery_id: int,
    *,
    transport: httpx.BaseTransport | None = None,
) -> str | None:
    """Make one attempt at a delivery; returns its new status (None: nothing was due)."""
    with database.transaction() as session:
        attempt = deliveries.claim(session, settings, delivery_id)
    if attempt is None:
        return None
    try:
        message = build_message(database, settings, attempt)
    except NotConfigured as exc:  # retried on the schedule: an operator can fix the setting
        outcome = Outcome(None, exc.detail)
    else:
        guard = UrlGuard(parse_networks(settings.webhook_allowed_networks))
        started = time.perf_counter()
        outcome = post(attempt.url, message, settings, transport or GuardedTransport(guard))
        WEBHOOK_ATTEMPT_SECONDS.observe(time.perf_counter() - started)
    with database.transaction() as session:
        status = deliveries.record(session, settings, attempt, outcome)
    WEBHOOK_ATTEMPTS.labels("delivered" if outcome.delivered else "failed").inc()
    log.info(
        "webhook_attempt",
        delivery_id=delivery_id,
        event_id=attempt.event_id,
        attempt=attempt.number,
        status_code=outcome.status_code,
        error=outcome.error,
        delivery_status=status,
    )
    return status


def build_message(database: Database, settings: Settings, attempt: Attempt) -> Message:
    box = SecretBox.from_settings(settings)
    with database.transaction() as session:  # may make the tenant's first secret
        secrets_ = signing_secrets(session, box, attempt.tenant_id)
    body = event_body(database, settings, attempt).encode()
    now = datetime.now(UTC)
    headers = {
        "webhook-id": attempt.event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature_header(secrets_, attempt.event_id, now, body.decode()),
        "content-type": "application/json",
        "user-agent": user_agent(),
    }
    return Message(body, headers)


def event_body(database: Database, settings: Settings, attempt: Attempt) -> str:
    """``{"type", "timestamp", "data"}``, ``data`` being what GET on the job (or the batch)
    returns; a batch event links to its results."""
    if attempt.batch_id is not None:
        from core.jobs.batch_results import batch_out
        from core.jobs.batches import get_batch

        with database.read() as session:
            batch = batch_out(get_batch(session, attempt.tenant_id, attempt.batch_id))
        base = f"{settings.public_url.rstrip('/')}/v1/batches/{attempt.batch_id}"
        data = batch.model_dump(mode="json") | {"results_url": f"{base}/results"}
        event = WebhookEvent(type=attempt.event_type, timestamp=attempt.occurred_at, data=data)
        return json.dumps(event.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)
    assert attempt.job_id is not None
    with database.read() as session:
        job = job_out(get_job(session, attempt.tenant_id, attempt.job_id))
    data = job.model_dump(mode="json", exclude={"webhook"})
    if len(data["results"]) > settings.webhook_max_results:
        data["results"] = []
        data["results_truncated"] = True
        data["results_url"] = f"{settings.public_url.rstrip('/')}/v1/jobs/{attempt.job_id}"
    event = WebhookEvent(type=attempt.event_type, timestamp=attempt.occurred_at, data=data)
    return json.dumps(event.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)


def post(url: str, message: Message, settings: Settings, transport: httpx.BaseTransport) -> Outcome:
    """POST once; never follows a redirect, reads a bounded part of the answer."""
    timeout = settings.webhook_timeout_seconds
    deadline = time.monotonic() + timeout
    try:
        # trust_env=False: a proxy from the environment would connect on the guard's behalf.
        with (
            httpx.Client(
                transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
            ) as client,
            client.stream("POST", url, content=message.body, headers=message.headers) as answer,
        ):
            read = 0
            for chunk in answer.iter_raw():
                read += len(chunk)
                if read >= settings.webhook_max_response_bytes or time.monotonic() > deadline:
                    break
            if time.monotonic() > deadline:
                return Outcome(answer.status_code, f"no complete answer within {timeout:g} s")
            return _judge(answer.status_code)
    except BlockedAddress as exc:
        return Outcome(None, str(exc), final=True)
    except httpx.TimeoutException:
        return Outcome(None, f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}")


def _judge(code: int) -> Outcome:
    if 200 <= code < 300:
        return Outcome(code)
    if code == GONE:
        return Outcome(code, "410 Gone: the receiver asked for no more deliveries", final=True)
    if 300 <= code < 400:
        return Outcome(code, f"HTTP {code}: redirects are not followed")
    return Outcome(code, f"HTTP {code}")
