"""A full fine-tune stored as int8 deltas from the base model (core.inference.weight_delta), and
the "full" training method that writes one. Pure unit tests: the real base weights, no services."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from core.inference.evaluation import DEFAULT_SST2_DIR, read_sst2
from core.inference.training import Identity, SentimentRecipe, train_classifier
from core.inference.transformer import (
    ADAPTER_WEIGHTS,
    SENTIMENT_LABELS,
    SentimentTransformer,
    artefact_files,
    build_classifier,
    weights_version,
)
from core.inference.weight_delta import (
    DELTA_WEIGHTS,
    WORD_EMBEDDINGS,
    apply_delta,
    delta_arrays,
    write_delta,
)

LINEAR = "encoder.encoder.layer.0.attention.self.query.weight"
BIAS = "encoder.encoder.layer.0.attention.self.query.bias"
NORM = "encoder.encoder.layer.5.output.LayerNorm.weight"


def _base_and_tuned() -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    torch.manual_seed(0)
    tuned = build_classifier()
    base = {k: v.clone() for k, v in tuned.state_dict().items() if not k.startswith("classifier.")}
    with torch.no_grad():
        state = tuned.state_dict()
        for name in (LINEAR, BIAS, NORM):
            state[name] += 0.01 * torch.randn_like(state[name])
        state[WORD_EMBEDDINGS][[5, 7]] += 0.02  # two word pieces seen in training
        state[WORD_EMBEDDINGS][9] *= 0.999  # one never seen: weight decay alone moved it
    return base, tuned


def test_the_stored_delta_rebuilds_the_tuned_weights(tmp_path: Path) -> None:
    base, tuned = _base_and_tuned()
    write_delta(tmp_path / DELTA_WEIGHTS, delta_arrays(tuned.state_dict(), base, {5, 7}))
    torch.manual_seed(1)  # another head initialisation: the stored head must replace it
    rebuilt = build_classifier()
    apply_delta(rebuilt, tmp_path / DELTA_WEIGHTS)

    want, got = tuned.state_dict(), rebuilt.state_dict()
    change = (want[LINEAR] - base[LINEAR]).abs().amax(dim=1, keepdim=True)
    assert ((got[LINEAR] - want[LINEAR]).abs() <= change / 254 + 1e-7).all()  # half an int8 step
    assert not torch.equal(got[LINEAR], base[LINEAR])
    for exact in (BIAS, NORM, "classifier.weight", "classifier.bias"):
        assert torch.equal(got[exact], want[exact])
    embeddings = got[WORD_EMBEDDINGS]
    assert torch.allclose(embeddings[[5, 7]], want[WORD_EMBEDDINGS][[5, 7]], atol=1e-4)
    assert torch.equal(embeddings[9], base[WORD_EMBEDDINGS][9])  # unseen rows stay the base's
    assert torch.equal(embeddings[11], base[WORD_EMBEDDINGS][11])


def test_the_same_weights_give_the_same_bytes(tmp_path: Path) -> None:
    base, tuned = _base_and_tuned()
    arrays = delta_arrays(tuned.state_dict(), base, {5, 7})
    write_delta(tmp_path / "a.npz", arrays)
    write_delta(tmp_path / "b.npz", dict(reversed(arrays.items())))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as stored:
        assert stored[LINEAR + ":int8"].dtype == np.int8
        assert stored[WORD_EMBEDDINGS + ":int8"].shape == (2, 384)  # the seen rows only


def test_a_delta_for_another_model_is_refused(tmp_path: Path) -> None:
    write_delta(tmp_path / DELTA_WEIGHTS, {"decoder.weight": np.zeros(3, dtype=np.float32)})
    with pytest.raises(RuntimeError, match="weights this model lacks"):
        apply_delta(build_classifier(), tmp_path / DELTA_WEIGHTS)


def test_an_unknown_training_method_is_refused() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        SentimentRecipe(method="prefix")


def _train(out_dir: Path, method: str) -> None:
    rows = read_sst2(DEFAULT_SST2_DIR / "train.tsv")[:48]
    train_classifier(
        rows,
        out_dir,
        identity=Identity("minilm-l6-sst2", "sentiment", SENTIMENT_LABELS),
        recipe=SentimentRecipe(method=method, epochs=1, batch_size=16),
        seed=3,
        rng=random.Random(3),
        progress=lambda _message: None,
    )


def test_a_full_fine_tune_is_stored_as_deltas_and_served(tmp_path: Path) -> None:
    _train(tmp_path / "a", "full")
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == sorted(
        artefact_files(tmp_path / "a")
    )
    assert (tmp_path / "a" / DELTA_WEIGHTS).is_file()
    model = SentimentTransformer.load(tmp_path / "a", precision="fp32")
    assert model.version == weights_version(tmp_path / "a")
    predictions = model.predict(["a gorgeous, moving film", "dull"])
    assert [p.label in SENTIMENT_LABELS for p in predictions] == [True, True]
    # Seeded: training again gives the same weights, to the byte (the card differs in timings).
    _train(tmp_path / "b", "full")
    assert (tmp_path / "b" / DELTA_WEIGHTS).read_bytes() == (
        tmp_path / "a" / DELTA_WEIGHTS
    ).read_bytes()


def test_training_the_other_way_into_a_folder_removes_the_first_ones_weights(
    tmp_path: Path,
) -> None:
    _train(tmp_path, "full")
    _train(tmp_path, "lora")
    assert (tmp_path / ADAPTER_WEIGHTS).is_file()
    assert not (tmp_path / DELTA_WEIGHTS).exists()
    assert SentimentTransformer.load(tmp_path, precision="fp32").version == weights_version(
        tmp_path
    )
