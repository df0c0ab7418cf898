"""The sentiment label set, SST-2 reading, and accuracy/throughput of any sentiment adapter.

Stdlib only (no torch, no numpy), so every tier of the `sentiment` chain can build its predictions
here and be scored the same way, whichever of its dependencies a worker image lacks.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from core.inference.types import Prediction

if TYPE_CHECKING:
    from core.inference.engine import ModelAdapter

# SST-2's label 0 and 1, in that order; the same names and order as the transformer tier's, so a
# fallback answer reads exactly like a primary one (tests hold the two tuples equal).
SENTIMENT_LABELS = ("negative", "positive")
DEFAULT_SST2_DIR = Path(__file__).resolve().parents[2] / "data" / "sst2"


class Evaluation(TypedDict):
    accuracy: float
    n: int
    seconds: float
    texts_per_second: float


def read_sst2(path: Path) -> list[tuple[str, int]]:
    """(text, label) rows of an SST-2 TSV with a header line; text as stored, not normalised."""
    with path.open(encoding="utf-8", newline="") as handle:
        # QUOTE_NONE: SST-2 sentences contain bare double quotes that are part of the text.
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [(text, int(label)) for text, label in reader]


def sentiment_prediction(p_positive: float) -> Prediction:
    """A binary sentiment Prediction from p(positive).

    A tie (exactly 0.5) is 'negative' in every tier: the transformer's max() keeps the first label
    and scikit-learn's predict() picks class 0 when the decision value is 0, so this matches both.
    """
    scores = {"negative": 1.0 - p_positive, "positive": p_positive}
    label = "positive" if p_positive > 0.5 else "negative"
    return Prediction(label=label, score=scores[label], scores=scores)


def evaluate_adapter(adapter: ModelAdapter, data_dir: Path, split: str = "test") -> Evaluation:
    """Accuracy of `adapter` on `data_dir`/`split`.tsv, timed as one predict() call over all rows.

    One call, as a worker batch would make it; the texts go in raw because adapters normalise.
    """
    rows = read_sst2(data_dir / f"{split}.tsv")
    if not rows:
        raise ValueError(f"{data_dir / f'{split}.tsv'} has no rows to evaluate on")
    texts: Sequence[str] = [text for text, _ in rows]
    started = time.perf_counter()
    predictions = adapter.predict(texts)
    seconds = time.perf_counter() - started
    if len(predictions) != len(rows):
        raise RuntimeError(f"{adapter.name} returned {len(predictions)} results for {len(rows)}")
    correct = sum(
        prediction.label == SENTIMENT_LABELS[label]
        for prediction, (_, label) in zip(predictions, rows, strict=True)
    )
    return Evaluation(
        accuracy=correct / len(rows),
        n=len(rows),
        seconds=seconds,
        texts_per_second=len(rows) / seconds if seconds > 0 else float("inf"),
    )
