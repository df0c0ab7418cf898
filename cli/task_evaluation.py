"""`inferq models evaluate ner|langid|topic`: each tier of the task's chain scored on the
project's own labelled set, in the shape of sentiment's table.

- `ner`: entity-level precision, recall and F1 (exact span and label; span only beside it) on
  data/ner/test.jsonl, scored by ``core.inference.ner.evaluate_entities``.
- `langid`: accuracy on data/langid/eval.tsv by ``core.inference.langid_eval``; an input a tier
  cannot decide (``LanguageUndetected``: the script rule on Latin text) counts as wrong, and the
  accuracy over the decided inputs is shown beside it.
- `topic`: accuracy and macro-F1 on AG News test (data/agnews/test.tsv, 7,600 rows).

Each tier is loaded exactly as a worker loads it (the registry's adapter, ``load(device=...)``),
so the figures are those of what serves. Adapters are imported inside the functions.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from core.inference.engine import ModelAdapter

# A scorer: (adapter, labelled file) -> the figures of one tier.
Scorer = Callable[["ModelAdapter", Path], dict[str, Any]]


def tiers(task: str, device: str) -> Iterator[tuple[str, ModelAdapter]]:
    """(tier, loaded adapter) along the task's chain, as a worker loads them."""
    from core.inference.registry import get_task

    for tier in get_task(task).chain:
        module_name, class_name = tier.adapter.split(":")
        adapter_type = getattr(importlib.import_module(module_name), class_name)
        yield tier.tier, adapter_type.load(device=device)


def default_data(task: str) -> Path:
    if task == "topic":
        from core.inference.topic import DEFAULT_AGNEWS_DIR

        return DEFAULT_AGNEWS_DIR / "test.tsv"
    if task == "ner":
        from core.inference.ner import DEFAULT_NER_SET

        return DEFAULT_NER_SET
    from core.inference.langid_eval import DEFAULT_LANGID_SET

    return DEFAULT_LANGID_SET


def score_ner(adapter: ModelAdapter, path: Path) -> dict[str, Any]:
    from core.inference.ner import evaluate_entities, prediction_spans, read_ner_set

    rows = read_ner_set(path)
    started = time.perf_counter()
    predictions = adapter.predict([text for text, _ in rows])
    seconds = time.perf_counter() - started
    evaluation = evaluate_entities(
        [gold for _, gold in rows], [prediction_spans(p) for p in predictions]
    )
    return {**evaluation.as_dict(), "n": len(rows), "seconds_per_1000": _per_1000(seconds, rows)}


def score_langid(adapter: ModelAdapter, path: Path) -> dict[str, Any]:
    from core.inference.langid_eval import evaluate_langid, read_langid_set

    rows = read_langid_set(path)
    started = time.perf_counter()
    score = evaluate_langid(adapter, rows)
    seconds = time.perf_counter() - started
    return {**score, "seconds_per_1000": _per_1000(seconds, rows)}


def score_topic(adapter: ModelAdapter, path: Path) -> dict[str, Any]:
    from core.inference.topic import evaluate_topic

    figures = evaluate_topic(adapter, path)
    return {**figures, "seconds_per_1000": figures["seconds"] / figures["n"] * 1000}


def _per_1000(seconds: float, rows: list[Any]) -> float:
    return seconds / len(rows) * 1000 if rows else 0.0


def ner_table(task: str, figures: dict[str, dict[str, Any]]) -> Table:
    table = Table(
        "task", "tier", "model", "version", "precision", "recall", "F1", "span F1",
        "gold", "predicted", "n", "s/1k",
    )  # fmt: skip
    for tier, f in figures.items():
        exact = f["exact"]
        table.add_row(
            task, tier, f["model"], f["version"], f"{exact['precision']:.4f}",
            f"{exact['recall']:.4f}", f"{exact['f1']:.4f}", f"{f['span']['f1']:.4f}",
            str(f["gold"]), str(f["predicted"]), str(f["n"]), f"{f['seconds_per_1000']:.3f}",
        )  # fmt: skip
    return table


def ner_labels_table(figures: dict[str, dict[str, Any]]) -> Table:
    """Exact-match scores per entity label, every tier."""
    table = Table("tier", "label", "precision", "recall", "F1", "tp", "fp", "fn")
    for tier, f in figures.items():
        for label, s in f["per_label"].items():
            table.add_row(
                tier, label, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}",
                str(s["tp"]), str(s["fp"]), str(s["fn"]),
            )  # fmt: skip
    return table


def langid_table(task: str, figures: dict[str, dict[str, Any]]) -> Table:
    table = Table(
        "task", "tier", "model", "version", "accuracy", "decided acc.", "undecided", "languages",
        "n", "s/1k",
    )  # fmt: skip
    for tier, f in figures.items():
        decided = f["decided_accuracy"]
        table.add_row(
            task, tier, f["model"], f["version"], f"{f['accuracy']:.4f}",
            "-" if decided is None else f"{decided:.4f}", str(f["undecided"]),
            str(len(f["per_language"])), str(f["n"]), f"{f['seconds_per_1000']:.3f}",
        )  # fmt: skip
    return table


def topic_table(task: str, figures: dict[str, dict[str, Any]]) -> Table:
    table = Table("task", "tier", "model", "version", "accuracy", "macro-F1", "n", "s/1k")
    for tier, f in figures.items():
        table.add_row(
            task, tier, f["model"], f["version"], f"{f['accuracy']:.4f}", f"{f['macro_f1']:.4f}",
            str(f["n"]), f"{f['seconds_per_1000']:.3f}",
        )  # fmt: skip
    return table


SCORERS: dict[str, Scorer] = {"ner": score_ner, "langid": score_langid, "topic": score_topic}
TABLES = {"ner": ner_table, "langid": langid_table, "topic": topic_table}


def evaluate_task(task: str, path: Path, device: str) -> tuple[dict[str, dict[str, Any]], Table]:
    """Every tier's figures on `path` ({tier: {model, version, ...}}) and their table."""
    scorer = SCORERS[task]
    figures = {
        tier: {"model": adapter.name, "version": adapter.version, **scorer(adapter, path)}
        for tier, adapter in tiers(task, device)
    }
    table = TABLES[task](task, figures)
    return figures, table


def evaluate_other(
    task: str, data: Path | None, artefact: Path | None, device: str
) -> dict[str, dict[str, Any]]:
    """`models evaluate ner|langid|topic`: print the tables, return the figures for
    --metrics-json."""
    if artefact is not None:
        raise typer.BadParameter(f"{task!r} has no trained artefacts", param_hint="--artefact")
    path = data or default_data(task)
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file", param_hint="--data")
    try:
        figures, table = evaluate_task(task, path, device)
    except (ValueError, KeyError) as exc:  # a malformed line of the labelled file
        raise typer.BadParameter(f"{path}: {exc!r}", param_hint="--data") from exc
    console = Console(width=160)
    console.print(table)
    if task == "ner":
        console.print(ner_labels_table(figures))
    return figures
