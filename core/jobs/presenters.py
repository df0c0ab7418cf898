"""Results as the wire shape every door returns (HTTP responses, Kafka result records)."""

from __future__ import annotations

from typing import Any, Protocol

from core.inference.engine import Output
from schemas.jobs import ResultOut


class StoredResult(Protocol):
    """A result row: the ORM object, or a row selected with the same column names."""

    @property
    def label(self) -> str | None: ...
    @property
    def score(self) -> float | None: ...
    @property
    def output(self) -> dict[str, Any] | None: ...
    @property
    def model(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def tier(self) -> str: ...
    @property
    def degraded(self) -> bool: ...
    @property
    def cached(self) -> bool: ...


def result_out(index: int, result: StoredResult) -> ResultOut:
    extra = result.output or {}
    return ResultOut(
        index=index,
        label=result.label,
        score=result.score,
        scores=extra.get("scores"),
        embedding=extra.get("embedding"),
        model=result.model,
        version=result.version,
        tier=result.tier,
        degraded=result.degraded,
        cached=result.cached,
    )


def output_out(index: int, output: Output) -> ResultOut:
    """A result as the engine or the cache produced it, before it is read back."""
    prediction = output.prediction
    return ResultOut(
        index=index,
        label=prediction.label,
        score=prediction.score,
        scores=prediction.scores,
        embedding=prediction.embedding,
        model=output.model,
        version=output.version,
        tier=output.tier,
        degraded=output.degraded,
        cached=output.cached,
    )
