"""Runs a task's fallback chain over a list of texts, loading each tier on first use.

One engine per worker process. Models are loaded lazily (or by ``warm_up`` in the worker's
process-init hook), never at import and never in a parent process that later forks.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from core.inference.registry import TierSpec, get_task
from core.inference.types import Prediction

log = structlog.get_logger(__name__)


class ModelAdapter(Protocol):
    name: str
    version: str

    def predict(self, texts: Sequence[str]) -> list[Prediction]: ...


@dataclass(frozen=True)
class Output:
    prediction: Prediction
    model: str
    version: str
    tier: str
    degraded: bool
    cached: bool = False


class ChainExhausted(RuntimeError):
    """Every tier of a task's chain failed for this batch."""


class InferenceEngine:
    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._models: dict[tuple[str, str], ModelAdapter] = {}
        self._lock = threading.Lock()

    def model(self, task: str, tier: TierSpec) -> ModelAdapter:
        key = (task, tier.tier)
        with self._lock:
            if key not in self._models:
                module_name, class_name = tier.adapter.split(":")
                adapter_cls = getattr(importlib.import_module(module_name), class_name)
                self._models[key] = adapter_cls.load(device=self.device)
                log.info("model_loaded", task=task, tier=tier.tier, device=self.device)
            return self._models[key]

    def warm_up(self, tasks: Sequence[str]) -> None:
        for task in tasks:
            primary = get_task(task).chain[0]
            self.model(task, primary).predict(["warm up"])

    def run(self, task: str, texts: Sequence[str]) -> list[Output]:
        errors: list[str] = []
        for position, tier in enumerate(get_task(task).chain):
            try:
                adapter = self.model(task, tier)
                predictions = adapter.predict(texts)
            except Exception as exc:  # any tier failure moves down the chain, with the reason
                log.warning("tier_failed", task=task, tier=tier.tier, error=repr(exc))
                errors.append(f"{tier.tier}: {exc!r}")
                continue
            if len(predictions) != len(texts):
                count = f"{len(predictions)} results for {len(texts)} inputs"
                raise ChainExhausted(f"{task}/{tier.tier} returned {count}")
            return [
                Output(p, adapter.name, adapter.version, tier.tier, degraded=position > 0)
                for p in predictions
            ]
        raise ChainExhausted(f"every tier of {task} failed: {'; '.join(errors)}")
