"""Webhook contracts (version 1): the delivery state shown on a job, the event body, the secret.

Events follow Standard Webhooks: headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature``; the body is ``{"type", "timestamp", "data"}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

DeliveryStatus = Literal["pending", "delivered", "failing", "failed"]
EventType = Literal[
    "job.completed",
    "job.failed",
    "job.cancelled",
    "batch.completed",
    "batch.failed",
    "batch.cancelled",
    "batch.expired",
]


class WebhookOut(BaseModel):
    """Where the delivery of a job's event stands."""

    status: DeliveryStatus
    attempts: int = Field(description="Attempts in the current series (redeliver starts one).")
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="Standard Webhooks secret: whsec_ + base64 of 32 bytes.")


class WebhookEvent(BaseModel):
    """The body of a delivery. ``data`` is what GET /v1/jobs/{id} returns (without ``webhook``);
    above INFERQ_WEBHOOK_MAX_RESULTS results it has none and ``results_url`` says where to read
    them."""

    type: EventType
    timestamp: datetime
    data: dict[str, object]
