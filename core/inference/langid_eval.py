"""The `langid` evaluation set and the accuracy of any `langid` adapter on it. Stdlib only.

data/langid/eval.tsv: a `text<TAB>label` header, then one short sentence per line labelled with
its ISO 639-1 code (built by data/langid/build.py; its README says where the text comes from).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from core.inference.langid_rules import LanguageUndetected

if TYPE_CHECKING:
    from core.inference.engine import ModelAdapter

DEFAULT_LANGID_SET = Path(__file__).resolve().parents[2] / "data" / "langid" / "eval.tsv"
HEADER = ["text", "label"]


class LanguageScore(TypedDict):
    n: int
    correct: int
    accuracy: float


class LangidScore(TypedDict):
    accuracy: float  # undecided inputs count as wrong
    n: int
    correct: int
    undecided: int  # inputs the adapter raised LanguageUndetected for
    decided_accuracy: float | None  # accuracy over the decided inputs only
    per_language: dict[str, LanguageScore]


def read_langid_set(path: Path = DEFAULT_LANGID_SET) -> list[tuple[str, str]]:
    """(text, label) rows; ValueError on a missing header or a row that is not two fields."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if next(reader, None) != HEADER:
            raise ValueError(f"{path}: the first line must be {'<TAB>'.join(HEADER)}")
        rows: list[tuple[str, str]] = []
        for number, row in enumerate(reader, start=2):
            if len(row) != 2 or not row[0] or not row[1]:
                raise ValueError(f"{path}:{number}: expected text<TAB>label, got {row!r}")
            rows.append((row[0], row[1]))
    return rows


def langid_accuracy(gold: Sequence[str], predicted: Sequence[str | None]) -> LangidScore:
    """Overall and per-gold-label accuracy; None in `predicted` is an undecided input."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} labels")
    totals: Counter[str] = Counter(gold)
    correct: Counter[str] = Counter(g for g, p in zip(gold, predicted, strict=True) if g == p)
    undecided = sum(p is None for p in predicted)
    hits = sum(correct.values())
    decided = len(gold) - undecided
    return {
        "accuracy": hits / len(gold) if gold else 0.0,
        "n": len(gold),
        "correct": hits,
        "undecided": undecided,
        "decided_accuracy": hits / decided if decided else None,
        "per_language": {
            label: {"n": n, "correct": correct[label], "accuracy": correct[label] / n}
            for label, n in sorted(totals.items())
        },
    }


def predict_labels(
    adapter: ModelAdapter, texts: Sequence[str], batch_size: int = 64
) -> list[str | None]:
    """Top labels in batches; a batch that raises LanguageUndetected is redone one text at a time
    so that only the undecidable inputs get None (as the engine isolates them)."""
    labels: list[str | None] = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        try:
            labels.extend(p.label for p in adapter.predict(batch))
        except LanguageUndetected:
            labels.extend(_one_label(adapter, text) for text in batch)
    return labels


def _one_label(adapter: ModelAdapter, text: str) -> str | None:
    try:
        return adapter.predict([text])[0].label
    except LanguageUndetected:
        return None


def evaluate_langid(
    adapter: ModelAdapter, rows: Sequence[tuple[str, str]], batch_size: int = 64
) -> LangidScore:
    texts = [text for text, _ in rows]
    return langid_accuracy([label for _, label in rows], predict_labels(adapter, texts, batch_size))
