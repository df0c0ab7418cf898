"""`logreg`: the light tier's TF-IDF + logistic regression (core.inference.light), as a strategy."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from core.inference.light import LightRecipe, TfidfSentiment, fit_light, save_light_artefact
from core.inference.strategies.base import Progress
from core.inference.strategies.data import iter_labelled, iter_texts


class LogregStrategy:
    arch: ClassVar[str] = "logreg"
    tasks: ClassVar[tuple[str, ...]] = ("sentiment",)

    def default_recipe(self) -> LightRecipe:
        return LightRecipe()

    def train(
        self, data_dir: Path, out_dir: Path, recipe: LightRecipe, *, seed: int, progress: Progress
    ) -> None:
        # The texts stream into TfidfVectorizer's counting pass. The labels are a list (one int a
        # row, read in a second lazy pass) because LogisticRegression fits on an array of them
        # beside the sparse TF-IDF matrix, which itself holds every row: the vocabulary and the
        # solver need the whole data set, so this is the one place a stream cannot go end to end.
        path = data_dir / "train.tsv"
        labels = [label for _, label in iter_labelled(path)]
        progress(f"fitting TF-IDF + logistic regression on {len(labels)} rows of {path}")
        vectorizer, classifier = fit_light(iter_texts(path), labels, recipe, seed=seed)
        save_light_artefact(vectorizer, classifier, recipe, out_dir)

    def load(self, artefact_dir: Path, device: str = "cpu") -> TfidfSentiment:
        return TfidfSentiment.load(artefact_dir, device)
