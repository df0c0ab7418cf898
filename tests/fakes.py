"""Fake model adapters for fault injection. Tasks that use them are configured like any other
(INFERQ_TASKS), so real worker processes load them exactly as they load real models."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from core.inference.types import Prediction

POISON = "POISON"


def _label(text: str) -> Prediction:
    positive = "good" in text.lower()
    score = 0.9
    return Prediction(
        label="positive" if positive else "negative",
        score=score,
        scores={
            "positive": score if positive else 1 - score,
            "negative": 1 - score if positive else score,
        },
    )


class _Fake:
    name = "fake"
    version = "fake-1"

    @classmethod
    def load(cls, device: str = "cpu") -> _Fake:
        return cls()

    @classmethod
    def current_version(cls) -> str:
        return cls.version

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [_label(text) for text in texts]


class Healthy(_Fake):
    name = "healthy"


class AlwaysFails(_Fake):
    name = "always-fails"

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        raise RuntimeError("injected failure")


class Slow(_Fake):
    """Takes longer than the task's per-batch deadline."""

    name = "slow"

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        time.sleep(float(os.environ.get("INFERQ_TEST_SLOW_SECONDS", "0.5")))
        return super().predict(texts)


class PoisonSensitive(_Fake):
    """Fails any batch that holds a poison input, like a model that crashes on one input."""

    name = "poison-sensitive"

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        if any(POISON in text for text in texts):
            raise ValueError("cannot process a poison input")
        return super().predict(texts)


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the engine recognises by name."""


class NeedsSmallBatches(_Fake):
    """Runs out of (pretend) GPU memory above two inputs a batch."""

    name = "needs-small-batches"
    calls: list[int] = []  # noqa: RUF012 - batch sizes seen, for the test to read

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        type(self).calls.append(len(texts))
        if len(texts) > 2:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().predict(texts)


class Paced(_Fake):
    """Takes INFERQ_TEST_SECONDS_PER_TEXT per input, like a model with a steady cost per input."""

    name = "paced"

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        time.sleep(float(os.environ.get("INFERQ_TEST_SECONDS_PER_TEXT", "0.002")) * len(texts))
        return super().predict(texts)
