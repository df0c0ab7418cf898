"""What a model adapter returns for one input. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prediction:
    label: str | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    embedding: list[float] | None = None
    # `ner`: [{"text", "label", "start", "end"}], character offsets into the input as sent.
    entities: list[dict[str, Any]] | None = None


class NoAnswer(ValueError):
    """The tier works, but this input has no answer from it (a text without a single letter has
    no language). The input moves on to the next tier, fails if none answers, and does not
    count against the tier's circuit breaker: the tier is healthy, the input is not."""
