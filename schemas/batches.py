"""HTTP contracts for /v1/batches (version 1), in the OpenAI Batch API's shape. Wire shapes
only; rules live in core.jobs.batches."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.jobs import Usage

BatchStatusName = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "cancelling",
    "cancelled",
    "expired",
]


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int = Field(description="Lines refused at upload, failed in a worker, or expired.")
    pending: int
    cancelled: int


class BatchOut(BaseModel):
    id: uuid.UUID
    object: Literal["batch"] = "batch"
    task: str = Field(description="The task, or the tasks joined by commas.")
    tasks: list[str] | None = Field(
        default=None,
        description="A batch of several tasks (?task=a,b): them, in order; each line runs "
        "every one. Counts are then over (line, task) pairs.",
    )
    status: BatchStatusName
    priority: Literal["interactive", "bulk"]
    completion_window: str
    request_counts: RequestCounts
    created_at: datetime
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    expires_at: datetime | None
    expired_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None
    metadata: dict[str, Any] | None = None
    results_url: str
    usage: Usage = Field(default_factory=Usage, description="The sum over the batch's jobs.")


class BatchPage(BaseModel):
    data: list[BatchOut]
    next_cursor: str | None


class LineError(BaseModel):
    code: str
    message: str


class TaskResultLine(BaseModel):
    """One task's part of a result line in a batch of several tasks."""

    line: int | None = None
    result: dict[str, Any] | None = None
    error: LineError | None = None


class ResultLine(BaseModel):
    """One line of GET /v1/batches/{id}/results: ``result`` or ``error``, never both; in a
    batch of several tasks, ``tasks`` instead: one such line (without ``id``) per task."""

    id: str
    line: int | None = Field(default=None, description="The input line, on error lines.")
    result: dict[str, Any] | None = None
    error: LineError | None = None
    tasks: dict[str, TaskResultLine] | None = None
