"""`transformer`: the primary tier's MiniLM fine-tuning recipe (core.inference.training)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from core.inference.strategies.base import Progress

if TYPE_CHECKING:
    from core.inference.training import SentimentRecipe
    from core.inference.transformer import SentimentTransformer


class TransformerStrategy:
    """Imports the recipe lazily: `core.inference.training` pulls in the transformer stack."""

    arch: ClassVar[str] = "transformer"
    tasks: ClassVar[tuple[str, ...]] = ("sentiment",)

    def default_recipe(self) -> SentimentRecipe:
        from core.inference.training import SentimentRecipe

        return SentimentRecipe()

    def train(
        self,
        data_dir: Path,
        out_dir: Path,
        recipe: SentimentRecipe,
        *,
        seed: int,
        progress: Progress,
    ) -> None:
        # The phrase sample is deduplicated and shuffled as a whole (sample_phrases), so this
        # recipe reads train.tsv into a list: a seeded sample of distinct phrases needs them all.
        from core.inference.training import train_sentiment

        train_sentiment(data_dir, out_dir, seed=seed, progress=progress, recipe=recipe)

    def load(self, artefact_dir: Path, device: str = "cpu") -> SentimentTransformer:
        from core.inference.transformer import SentimentTransformer

        return SentimentTransformer.load(artefact_dir, device)
