"""HTTP contracts for /v1/jobs (version 1). Wire shapes only; rules live in core."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from schemas.webhooks import WebhookOut

MAX_TASKS_PER_JOB = 8


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: StrictStr | None = Field(
        default=None, description="Registered task name, e.g. 'sentiment' or 'embed'."
    )
    tasks: list[StrictStr] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TASKS_PER_JOB,
        description="Instead of `task`: several tasks, each run on every input; each result "
        "then holds one result per task (`results[i].tasks[name]`).",
    )
    inputs: list[StrictStr] = Field(description="Texts to run, one result each, in order.")
    priority: Literal["interactive", "bulk"] = "interactive"
    webhook_url: StrictStr | None = Field(default=None, max_length=2048)
    metadata: dict[str, Any] | None = Field(default=None, description="Echoed back as given.")

    @model_validator(mode="after")
    def _one_way_to_name_tasks(self) -> JobCreate:
        if (self.task is None) == (self.tasks is None):
            raise ValueError("give exactly one of `task` (a name) or `tasks` (a list of names)")
        if self.tasks is not None and len(set(self.tasks)) != len(self.tasks):
            raise ValueError("`tasks` names a task twice")
        return self


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


class MultiResultOut(BaseModel):
    """One input's results in a job of several tasks: by task name; a task whose run failed or
    was cancelled for this input is absent here and listed in `errors` with its name."""

    index: int
    tasks: dict[str, ResultOut]


class ItemError(BaseModel):
    index: int
    status: Literal["failed", "cancelled"]
    error: str | None
    task: str | None = Field(default=None, description="In a job of several tasks: which one.")


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
    task: str = Field(description="The task; for a job of several, their names joined by ','.")
    tasks: list[str] | None = Field(default=None, description="A job of several tasks: them.")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    priority: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    total_items: int
    metadata: dict[str, Any] | None = None


class JobOut(JobSummary):
    counts: Counts = Field(description="Over (input, task) pairs in a job of several tasks.")
    results: list[ResultOut] | list[MultiResultOut]
    errors: list[ItemError]
    usage: Usage = Field(default_factory=Usage)
    webhook: WebhookOut | None = Field(
        default=None, description="Delivery of the job's event; null without a webhook_url."
    )


class JobPage(BaseModel):
    data: list[JobSummary]
    next_cursor: str | None
