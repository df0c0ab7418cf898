"""The sentiment label set, SST-2 reading, and accuracy/throughput of any sentiment adapter.

Stdlib only (no torch, no numpy), so every tier of the `sentiment` chain can build its predictions
here and be scored the same way, whichever of its dependencies a worker image lacks.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, TypeVar

from core.inference.types import Prediction

if TYPE_CHECKING:
    from core.inference.engine import ModelAdapter

# SST-2's label 0 and 1, in that order; the same names and order as the transformer tier's, so a
# fallback answer reads exactly like a primary one (tests hold the two tuples equal).
SENTIMENT_LABELS = ("negative", "positive")
DEFAULT_SST2_DIR = Path(__file__).resolve().parents[2] / "data" / "sst2"
T = TypeVar("T")


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


# --- Streaming readers and the scores every model card and `models evaluate` report ----------

ECE_BINS = 15


class ModelMetrics(TypedDict):
    accuracy: float
    macro_f1: float
    ece: float
    n: int
    seconds_per_1000: float  # wall seconds of predict() per 1,000 inputs, on the machine that ran


def iter_labelled(path: Path) -> Iterator[tuple[str, int]]:
    """(text, label index) rows of a labelled file, read lazily one line at a time.

    `.jsonl`: one `{"text", "label"}` object a line, the label a name ("positive") or an index.
    Anything else: a TSV with a header line, `sentence<TAB>label`, as SST-2 ships. Text as stored:
    the adapters normalise, so evaluation meets the same preprocessing as serving.
    """
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix == ".jsonl":
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _jsonl_row(line, path, number)
            return
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader, None)
        for text, label in reader:
            yield text, _label_index(label, path)


def _jsonl_row(line: str, path: Path, number: int) -> tuple[str, int]:
    row = json.loads(line)
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
        raise ValueError(f"{path}:{number}: expected {{'text': str, 'label': ...}}, got {line!r}")
    return row["text"], _label_index(row["label"], path)


def _label_index(label: object, path: Path) -> int:
    """0/1 (int or digit string) or a label name, as the index into SENTIMENT_LABELS."""
    text = str(label).strip()
    if text in SENTIMENT_LABELS:
        return SENTIMENT_LABELS.index(text)
    if text in ("0", "1"):
        return int(text)
    raise ValueError(f"{path}: label {label!r} is none of 0, 1, {', '.join(SENTIMENT_LABELS)}")


def batched(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter), pulling only one at a time."""
    if size < 1:
        raise ValueError(f"batch size must be positive, not {size}")
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


def macro_f1(gold: Sequence[int], predicted: Sequence[int], n_labels: int) -> float:
    """Unweighted mean over the labels of F1 = 2TP / (2TP + FP + FN); 0 for a label never seen."""
    scores = []
    for label in range(n_labels):
        tp = sum(g == label == p for g, p in zip(gold, predicted, strict=True))
        fp = sum(p == label != g for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label != p for g, p in zip(gold, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / n_labels


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> float:
    """Σ_b |B_b|/n · |accuracy(B_b) - mean confidence(B_b)| over equal-width bins of (0, 1].

    Bin b holds confidences in (b/bins, (b+1)/bins], as in Guo et al. (2017); 0 falls in bin 0.
    """
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} outcomes")
    if not confidences:
        raise ValueError("no predictions to calibrate")
    members: list[list[int]] = [[] for _ in range(bins)]
    for index, confidence in enumerate(confidences):
        members[max(0, math.ceil(confidence * bins) - 1)].append(index)
    total = 0.0
    for indices in members:
        if indices:
            accuracy = sum(correct[i] for i in indices) / len(indices)
            mean_confidence = sum(confidences[i] for i in indices) / len(indices)
            total += len(indices) * abs(accuracy - mean_confidence)
    return total / len(confidences)


def score_adapter(
    adapter: ModelAdapter, rows: Iterable[tuple[str, int]], batch_size: int = 256
) -> ModelMetrics:
    """Accuracy, macro-F1, ECE and predict() time of `adapter` over labelled `rows`, batch by batch.

    Only labels, predicted indices and confidences are kept (three numbers a row), never the texts.
    """
    gold: list[int] = []
    predicted: list[int] = []
    confidences: list[float] = []
    seconds = 0.0
    for batch in batched(rows, batch_size):
        started = time.perf_counter()
        predictions = adapter.predict([text for text, _ in batch])
        seconds += time.perf_counter() - started
        if len(predictions) != len(batch):
            raise RuntimeError(f"{adapter.name} returned {len(predictions)} for {len(batch)}")
        for prediction, (_, label) in zip(predictions, batch, strict=True):
            gold.append(label)
            # A label outside the set (or none) counts as wrong for every class, not as a crash.
            label_name = prediction.label or ""
            known = label_name in SENTIMENT_LABELS
            predicted.append(SENTIMENT_LABELS.index(label_name) if known else -1)
            confidences.append(float(prediction.score or 0.0))
    if not gold:
        raise ValueError("no labelled rows to evaluate on")
    correct = [g == p for g, p in zip(gold, predicted, strict=True)]
    return ModelMetrics(
        accuracy=round(sum(correct) / len(gold), 4),
        macro_f1=round(macro_f1(gold, predicted, len(SENTIMENT_LABELS)), 4),
        ece=round(expected_calibration_error(confidences, correct), 4),
        n=len(gold),
        seconds_per_1000=round(seconds / len(gold) * 1000, 4),
    )
