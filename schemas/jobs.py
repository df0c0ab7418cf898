"""HTTP contracts for /v1/jobs (version 1). Wire shapes only; rules live in core."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from schemas.webhooks import WebhookOut


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: StrictStr = Field(description="Registered task name, e.g. 'sentiment' or 'embed'.")
    inputs: list[StrictStr] = Field(description="Texts to run, one result each, in order.")
    priority: Literal["interactive", "bulk"] = "interactive"
    webhook_url: StrictStr | None = Field(default=None, max_length=2048)
    metadata: dict[str, Any] | None = Field(default=None, description="Echoed back as given.")


class ResultOut(BaseModel):
    index: int
    label: str | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    embedding: list[float] | None = None
    model: str
    version: str
    tier: Literal["primary", "fallback", "rules"]
    degraded: bool
    cached: bool


class ItemError(BaseModel):
    index: int
    status: Literal["failed", "cancelled"]
    error: str | None


class Counts(BaseModel):
    total: int
    succeeded: int
    failed: int
    cancelled: int
    pending: int


class JobSummary(BaseModel):
    id: uuid.UUID
    task: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    priority: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    total_items: int
    metadata: dict[str, Any] | None = None


class JobOut(JobSummary):
    counts: Counts
    results: list[ResultOut]
    errors: list[ItemError]
    webhook: WebhookOut | None = Field(
        default=None, description="Delivery of the job's event; null without a webhook_url."
    )


class JobPage(BaseModel):
    data: list[JobSummary]
    next_cursor: str | None
