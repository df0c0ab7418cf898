"""Kafka contracts (version 1): the request envelope, the result record and the dead-letter
reason. Wire shapes only; the rules a text must pass live in core.jobs.validation.

- ``inferq.requests``: value = ``KafkaRequest`` as UTF-8 JSON; the key is free (partitioning).
- ``inferq.results``: key = the request's ``id``, value = ``KafkaResult`` as JSON. Delivery is
  at least once: a consumer keeps the first record per key and drops the rest.
- ``inferq.requests.dlq``: the original key, value and headers, plus a ``inferq-dlq-reason``
  header holding ``DeadLetterReason`` as JSON.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from schemas.jobs import ResultOut

SCHEMA_VERSION = 1
SCHEMA_HEADER = "inferq-schema"
REQUEST_SCHEMA = "inferq.request.v1"
RESULT_SCHEMA = "inferq.result.v1"
DLQ_REASON_HEADER = "inferq-dlq-reason"

# The job's idempotency key is "kafka:<id>" and must fit its 255-character column.
MAX_ID_CHARS = 200


class KafkaRequest(BaseModel):
    """One text to run; ``id`` is the caller's and makes redelivery harmless."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr = Field(min_length=1, max_length=MAX_ID_CHARS)
    task: StrictStr = Field(description="Registered task name, e.g. 'sentiment' or 'embed'.")
    text: StrictStr
    metadata: dict[str, Any] | None = Field(default=None, description="Echoed in the result.")


class KafkaResult(BaseModel):
    """The outcome of one request, published once its job has finished."""

    id: str = Field(description="The request's id; also the record key.")
    job_id: uuid.UUID
    task: str
    status: Literal["succeeded", "failed", "cancelled"]
    result: ResultOut | None = None
    error: str | None = None
    metadata: dict[str, Any] | None = None
    finished_at: datetime | None


DeadLetterError = Literal[
    "empty",  # no value (a tombstone)
    "invalid-utf8",
    "invalid-json",
    "invalid-envelope",  # JSON, but not {"id", "task", "text", "metadata"?} with those types
    "invalid-input",  # the envelope is fine; its content breaks a rule (length, NUL, ...)
    "unknown-task",
    "idempotency-conflict",  # the id was used before with another request
]


class DeadLetterReason(BaseModel):
    """Why a request was dead-lettered and where it was read."""

    version: int = SCHEMA_VERSION
    error: DeadLetterError
    detail: str
    topic: str
    partition: int
    offset: int
    dead_lettered_at: datetime
