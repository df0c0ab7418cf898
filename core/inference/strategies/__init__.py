"""Training strategies: one class per architecture, chosen by name (`--arch`).

A small factory, no framework: STRATEGIES maps each name to its class. Every strategy reads its
data through `strategies.data` (lazily, normalised by the tier's own preprocessing) and returns an
adapter that serves like any other tier. `run.train_artefact` wraps any of them into a versioned
artefact with a model card. Importing this package imports neither torch nor scikit-learn.
"""

from __future__ import annotations

from core.inference.strategies.base import TrainingStrategy, UnknownArchitecture
from core.inference.strategies.logreg import LogregStrategy
from core.inference.strategies.lstm import LstmStrategy
from core.inference.strategies.transformer import TransformerStrategy

STRATEGIES: dict[str, type[TrainingStrategy]] = {
    "transformer": TransformerStrategy,
    "lstm": LstmStrategy,
    "logreg": LogregStrategy,
}


def get_strategy(arch: str) -> TrainingStrategy:
    """A fresh strategy for `arch`; an unknown name is an error that lists the known ones."""
    try:
        return STRATEGIES[arch]()
    except KeyError:
        raise UnknownArchitecture(arch, sorted(STRATEGIES)) from None


__all__ = ["STRATEGIES", "TrainingStrategy", "UnknownArchitecture", "get_strategy"]
