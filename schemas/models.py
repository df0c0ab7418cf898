"""HTTP contract for GET /v1/models and GET /v1/models/{task}/drift (version 1)."""

from __future__ import annotations

from datetime import datetime

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


class DriftSignalOut(BaseModel):
    name: str  # label, confidence, length, embedding
    method: str  # psi, domain-classifier-auc
    score: float
    threshold: float
    drifted: bool  # score >= threshold


class DriftWindowOut(BaseModel):
    size: int  # primary-tier results in the live window now
    capacity: int  # INFERQ_DRIFT_WINDOW
    min_items: int  # below this many, no signal is computed yet


class DriftReferenceOut(BaseModel):
    model: str | None
    version: str | None  # the artefact version the profile was made with
    source: str | None  # the held-out data it was made from
    n: int | None


class DriftOut(BaseModel):
    """GET /v1/models/{task}/drift: the live window against the artefact's reference profile."""

    task: str
    window: DriftWindowOut
    reference: DriftReferenceOut
    signals: list[DriftSignalOut]
    drifted: bool
    checked_at: datetime
