"""HTTP contract for GET /v1/models (version 1)."""

from __future__ import annotations

from pydantic import BaseModel


class TierOut(BaseModel):
    tier: str
    adapter: str
    version: str | None
    circuit: str  # closed, open, half-open or forced-open
    # "ok", or "unavailable: <error>" while some worker reports it cannot load this tier
    availability: str = "ok"


class TaskOut(BaseModel):
    task: str
    description: str
    chain: list[TierOut]


class ModelList(BaseModel):
    data: list[TaskOut]
