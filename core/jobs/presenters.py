"""Stored results as the wire shape every door returns (HTTP responses, Kafka result records)."""

from __future__ import annotations

from core.db.models import JobItem
from schemas.jobs import ResultOut


def result_out(item: JobItem) -> ResultOut:
    result = item.result
    assert result is not None
    extra = result.output or {}
    return ResultOut(
        index=item.index,
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
