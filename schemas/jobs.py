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


class EntityOut(BaseModel):
    """A named entity (`ner`): ``input[start:end] == text``, offsets in characters (code points)
    of the input exactly as sent."""

    text: str
    label: str = Field(description="spaCy's label: PERSON, ORG, GPE, DATE, MONEY, ...")
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class ResultOut(BaseModel):
    index: int
    label: str | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    embedding: list[float] | None = None
    entities: list[EntityOut] | None = Field(
        default=None, description="`ner`: every entity found, in input order; [] when none."
    )
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


class TierCounts(BaseModel):
    primary: int = 0
    fallback: int = 0
    rules: int = 0


class Usage(BaseModel):
    """What a job (or a batch: the sum over its jobs) used; counted once per input, whatever
    the redeliveries."""

    inputs: int = Field(default=0, description="Inputs that got their result.")
    cached_inputs: int = Field(
        default=0,
        description="Of those, answered from the result cache (at submit or in a worker).",
    )
    tokens: int = Field(
        default=0,
        description="Estimated tokens (about four characters each, the estimate batches are "
        "sized by; not the tokenizer's count) of the inputs a model ran on.",
    )
    model_seconds: float = Field(
        default=0.0,
        description="Share of the model wall time of the batches the inputs ran in: each "
        "batch's time split over its inputs by their estimated tokens.",
    )
    gpu_model_seconds: float = Field(
        default=0.0, description="The part of model_seconds spent on GPU workers."
    )
    tiers: TierCounts = Field(
        default_factory=TierCounts, description="Inputs served by each tier of the chain."
    )


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
    usage: Usage = Field(default_factory=Usage)
    webhook: WebhookOut | None = Field(
        default=None, description="Delivery of the job's event; null without a webhook_url."
    )


class JobPage(BaseModel):
    data: list[JobSummary]
    next_cursor: str | None
