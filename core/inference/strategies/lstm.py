"""`lstm`: a BiLSTM over MiniLM's word pieces (core.inference.lstm), trained from a stream.

Each epoch reads train.tsv afresh, shuffles it through a bounded buffer, tokenises a batch at a
time with the primary tier's tokenisation path and steps the optimiser: no epoch holds the file.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from core.inference.lstm import LstmSentiment, LstmShape, build_lstm, save_lstm_artefact
from core.inference.strategies.base import Progress
from core.inference.strategies.data import batched, iter_labelled, shuffled, take

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class LstmRecipe:
    """Hyper-parameters; recorded in the model card. Sized for a CPU run of minutes."""

    hidden_size: int = 128
    layers: int = 1
    dropout: float = 0.3
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    shuffle_buffer: int = 16_384  # rows held to shuffle; train.tsv has about 60,000
    max_rows: int = 0  # read only the first N rows of train.tsv (0: all); for quick runs


class LstmStrategy:
    arch: ClassVar[str] = "lstm"
    tasks: ClassVar[tuple[str, ...]] = ("sentiment",)

    def default_recipe(self) -> LstmRecipe:
        return LstmRecipe()

    def train(
        self, data_dir: Path, out_dir: Path, recipe: LstmRecipe, *, seed: int, progress: Progress
    ) -> None:
        import torch

        from core.inference.transformer import load_tokenizer

        torch.manual_seed(seed)  # initialisation and dropout masks
        rng = random.Random(seed)  # the shuffle buffer's order
        shape = LstmShape(recipe.hidden_size, recipe.layers, recipe.dropout)
        model = build_lstm(shape)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(
            trainable, lr=recipe.learning_rate, weight_decay=recipe.weight_decay
        )
        tokenizer = load_tokenizer()
        for epoch in range(1, recipe.epochs + 1):
            model.train()
            batches = _epoch_batches(data_dir / "train.tsv", tokenizer, recipe, rng)
            pad_id = int(tokenizer.pad_token_id)
            loss, steps = _run_epoch(model, optimiser, batches, recipe.max_grad_norm, pad_id)
            progress(f"epoch {epoch}/{recipe.epochs}: {steps} steps, mean loss {loss:.4f}")
        save_lstm_artefact(model, shape, out_dir)

    def load(self, artefact_dir: Path, device: str = "cpu") -> LstmSentiment:
        return LstmSentiment.load(artefact_dir, device)


def _epoch_batches(
    path: Path, tokenizer: PreTrainedTokenizerBase, recipe: LstmRecipe, rng: random.Random
) -> Iterator[tuple[list[list[int]], list[int]]]:
    """(word-piece sequences, labels) per batch, from one lazy, buffer-shuffled pass over `path`."""
    from core.inference.transformer import tokenise

    rows = shuffled(take(iter_labelled(path), recipe.max_rows), recipe.shuffle_buffer, rng)
    for batch in batched(rows, recipe.batch_size):
        yield tokenise(tokenizer, [text for text, _ in batch]), [label for _, label in batch]


def _run_epoch(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    batches: Iterator[tuple[list[list[int]], list[int]]],
    max_grad_norm: float,
    pad_id: int,
) -> tuple[float, int]:
    """One pass of optimiser steps; returns the mean training loss and the number of steps."""
    import torch

    from core.inference.transformer import pad_batch

    total, steps = 0.0, 0
    for sequences, labels in batches:
        input_ids, mask = pad_batch(sequences, pad_id, torch.device("cpu"))
        loss = torch.nn.functional.cross_entropy(model(input_ids, mask), torch.tensor(labels))
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimiser.step()
        total, steps = total + loss.item(), steps + 1
    return total / max(steps, 1), steps
