"""HTTP contract for GET /v1/models, GET /v1/models/{task}/drift and .../rollout (version 1)."""

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
    outputs: list[str]  # the result fields this task fills: label/score/scores, entities, ...
    labels: list[str]  # the values `label` (or an entity's label) takes; [] if open-ended


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


class VersionStatsOut(BaseModel):
    version: str
    role: str  # champion, canary, shadow
    items: int  # inputs served (champion, canary) or shadowed in this revision
    ms_per_item: float | None  # model time per input (cached results cost none)
    mean_confidence: float | None
    compared: int  # shadow: inputs compared with the champion's result
    agreed: int
    agreement: float | None  # agreed / compared
    failed: int  # shadow: inputs it produced nothing for


class RolloutChangeOut(BaseModel):
    revision: int
    action: str  # promote, rollback, canary, shadow, stop
    champion: str | None
    canary: str | None
    canary_percent: float
    shadow: str | None
    shadow_percent: float
    at: datetime
    actor: str


class RolloutOut(BaseModel):
    """GET /v1/models/{task}/rollout: what serves the task's primary tier and how it does."""

    task: str
    revision: int  # 0: never changed; the shipped artefact serves alone
    champion: str | None  # its version (the shipped artefact's when none was promoted)
    champion_is_shipped: bool
    canary: str | None
    canary_percent: float
    shadow: str | None
    shadow_percent: float
    shadow_agreement: float | None
    versions: list[VersionStatsOut]
    changed_at: datetime | None
    changed_by: str | None
    history: list[RolloutChangeOut]  # newest first
