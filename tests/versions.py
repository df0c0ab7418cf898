"""Trained model versions for rollout tests: real `logreg` artefacts (TF-IDF + logistic
regression, the light tier's code) trained on a small slice of SST-2 in about a second each, laid
out as `inferq models train --arch` lays them out, so the model store finds them."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from core.inference.strategies.run import TrainedArtefact, train_artefact
from core.inference.versions import models_root

SST2 = Path(__file__).resolve().parents[1] / "data" / "sst2"


def tiny_sst2(directory: Path, train_rows: int = 3000, test_rows: int = 200) -> Path:
    """The first rows of SST-2's train and test files (with their headers) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train_rows), ("test.tsv", test_rows)):
        with (SST2 / name).open(encoding="utf-8") as source:
            lines = list(islice(source, rows + 1))
        (directory / name).write_text("".join(lines), encoding="utf-8")
    return directory


def train_logreg(data_dir: Path, sst2: Path, regularisation: float) -> TrainedArtefact:
    """A `logreg` version of `sentiment` in `data_dir`'s model store; the inverse
    regularisation makes each a different version (another content hash)."""
    return train_artefact(
        "sentiment",
        "logreg",
        data_dir=sst2,
        out_root=models_root(data_dir) / "sentiment-logreg",
        params={"inverse_regularisation": regularisation, "max_features": 5000},
        seed=13,
    )
