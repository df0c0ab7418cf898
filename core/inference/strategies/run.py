"""Train any strategy into a versioned artefact with a model card; load an artefact back by card.

Layout: `<out_root>/<version>/`, the version being the adapter's content hash of its scoring files,
so two runs that produce the same bytes land in the same folder. The card (CARD_FILE) is written
after the version is known and is not part of it: it holds run facts (time, latency) that vary.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.inference.engine import ModelAdapter
from core.inference.evaluation import ModelMetrics, iter_labelled, score_adapter
from core.inference.preprocess import PREPROCESS_VERSION
from core.inference.strategies import get_strategy
from core.inference.strategies.base import Progress, recipe_from_params
from core.inference.strategies.data import data_fingerprint

CARD_FILE = "model_card.json"
CARD_SCHEMA = 1


@dataclass(frozen=True)
class TrainedArtefact:
    path: Path
    card: dict[str, Any]


def default_out_root(data_root: Path, task: str, arch: str) -> Path:
    """Where `models train --arch` writes when no --out-dir is given: never over shipped files."""
    return data_root / "models" / f"{task}-{arch}"


def train_artefact(
    task: str,
    arch: str,
    *,
    data_dir: Path,
    out_root: Path,
    params: Mapping[str, Any] | None = None,
    seed: int = 13,
    progress: Progress | None = None,
) -> TrainedArtefact:
    """Train `arch` for `task`, score it on `data_dir`/test.tsv, write `out_root`/<version>/."""
    report = progress or (lambda _message: None)
    strategy = get_strategy(arch)
    if task not in strategy.tasks:
        raise ValueError(f"{arch!r} trains {', '.join(strategy.tasks)}, not {task!r}")
    recipe = recipe_from_params(strategy.default_recipe(), params or {})
    staging = out_root / f".staging-{uuid.uuid4().hex}"
    try:
        started = time.perf_counter()
        strategy.train(data_dir, staging, recipe, seed=seed, progress=report)
        train_seconds = time.perf_counter() - started
        adapter = strategy.load(staging)
        report(f"trained in {train_seconds:.0f} s; scoring on {data_dir / 'test.tsv'}")
        metrics = score_adapter(adapter, iter_labelled(data_dir / "test.tsv"))
        card = _card(task, arch, adapter, recipe, seed, data_dir, metrics, train_seconds)
        _write_card(staging, card)
        final = out_root / adapter.version
        if final.exists():  # the same bytes again: the new card replaces the old run's
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TrainedArtefact(final, card)


def _card(
    task: str,
    arch: str,
    adapter: ModelAdapter,
    recipe: Any,
    seed: int,
    data_dir: Path,
    metrics: ModelMetrics,
    train_seconds: float,
) -> dict[str, Any]:
    return {
        "schema": CARD_SCHEMA,
        "task": task,
        "arch": arch,
        "name": adapter.name,
        "version": adapter.version,
        "seed": seed,
        "params": asdict(recipe),
        "data": {"train": data_fingerprint(data_dir / "train.tsv")},
        "preprocess_version": PREPROCESS_VERSION,
        "metrics": {"sst2_test": dict(metrics), "ece_bins": 15},
        "train_seconds": round(train_seconds, 1),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
    }


def _write_card(directory: Path, card: dict[str, Any]) -> None:
    text = json.dumps(card, indent=2, sort_keys=True) + "\n"
    (directory / CARD_FILE).write_text(text, encoding="utf-8")


def read_card(artefact_dir: Path) -> dict[str, Any]:
    path = artefact_dir / CARD_FILE
    if not path.is_file():
        raise ValueError(f"{artefact_dir} has no {CARD_FILE}: not made by `models train --arch`")
    card: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return card


def load_artefact(artefact_dir: Path, device: str = "cpu") -> ModelAdapter:
    """The adapter for an artefact made by train_artefact, chosen by the arch its card names."""
    return get_strategy(str(read_card(artefact_dir)["arch"])).load(artefact_dir, device)
