"""The shipped sentiment artefact and the embedder, loaded for real from the pip-installed base."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.inference.calibration import CALIBRATION_FILE, ece, read_calibration, softmax
from core.inference.evaluation import DEFAULT_SST2_DIR, read_sst2
from core.inference.preprocess import normalise
from core.inference.transformer import (
    MODEL_CARD,
    SENTIMENT_ARTEFACT_DIR,
    SentenceEmbedder,
    SentimentTransformer,
    artefact_files,
    artefact_version,
)

# The adapters need the `model` extra; an API-only install skips rather than fails.
pytest.importorskip("torch")
pytest.importorskip("peft")

MIXED_LENGTHS = [
    "Terrible.",
    "A warm, funny and beautifully acted film that I would happily watch again with friends.",
    "",
    "Dull, lifeless and far too long; I walked out before the end.",
    "Great!",
]


@pytest.fixture(scope="module")
def sentiment() -> Iterator[SentimentTransformer]:
    yield SentimentTransformer.load(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceEmbedder]:
    yield SentenceEmbedder.load(device="cpu", precision="fp32")


def test_obvious_sentiments_get_the_obvious_label(sentiment: SentimentTransformer) -> None:
    positive, negative = sentiment.predict(
        ["An absolute delight: moving, funny and brilliantly acted.", "A boring, painful mess."]
    )
    assert positive.label == "positive"
    assert negative.label == "negative"
    assert positive.scores is not None
    assert positive.score == positive.scores["positive"] > 0.5
    assert math.isclose(sum(positive.scores.values()), 1.0, rel_tol=1e-5)


def test_one_prediction_per_input_in_input_order(sentiment: SentimentTransformer) -> None:
    sentiment.batch_size = 2  # several length-sorted batches, so the reordering is exercised
    try:
        together = sentiment.predict(MIXED_LENGTHS)
    finally:
        sentiment.batch_size = 64
    alone = [sentiment.predict([text])[0] for text in MIXED_LENGTHS]
    assert len(together) == len(MIXED_LENGTHS)
    for batched, single in zip(together, alone, strict=True):
        assert batched.label == single.label
        assert batched.score == pytest.approx(single.score, abs=1e-4)


def test_empty_input_gives_no_predictions(sentiment: SentimentTransformer) -> None:
    assert sentiment.predict([]) == []


def test_predict_normalises_whitespace_itself(sentiment: SentimentTransformer) -> None:
    messy, clean = sentiment.predict(["  a  moving\n\tfilm ", "a moving film"])
    assert messy.score == pytest.approx(clean.score, abs=1e-6)


def test_embeddings_are_384_dimensional_unit_vectors(embedder: SentenceEmbedder) -> None:
    predictions = embedder.predict(MIXED_LENGTHS)
    assert len(predictions) == len(MIXED_LENGTHS)
    for prediction in predictions:
        assert prediction.embedding is not None
        assert len(prediction.embedding) == 384
        assert math.sqrt(sum(x * x for x in prediction.embedding)) == pytest.approx(1.0, abs=1e-5)


def test_similar_sentences_embed_closer_than_unrelated_ones(embedder: SentenceEmbedder) -> None:
    cat, kitten, tax = (
        p.embedding
        for p in embedder.predict(
            [
                "A cat sits on the mat.",
                "A kitten rests on a rug.",
                "Quarterly tax filing deadlines.",
            ]
        )
    )
    assert cat is not None and kitten is not None and tax is not None
    assert sum(a * b for a, b in zip(cat, kitten, strict=True)) > sum(
        a * b for a, b in zip(cat, tax, strict=True)
    )


def test_version_follows_the_artefact_bytes_not_its_location(tmp_path: Path) -> None:
    shipped = artefact_version(SENTIMENT_ARTEFACT_DIR)
    copy = tmp_path / "sentiment"
    copy.mkdir()
    for name in (*artefact_files(SENTIMENT_ARTEFACT_DIR), CALIBRATION_FILE):
        shutil.copy2(SENTIMENT_ARTEFACT_DIR / name, copy / name)
    assert artefact_version(copy) == shipped
    with (copy / MODEL_CARD).open("a", encoding="utf-8") as card:
        card.write("\n")
    assert len(artefact_version(copy)) == 12
    assert artefact_version(copy) != shipped


def test_loaded_model_reports_the_artefact_version(sentiment: SentimentTransformer) -> None:
    assert sentiment.name == "minilm-l6-sst2"
    assert sentiment.version == artefact_version(SENTIMENT_ARTEFACT_DIR)


def test_served_scores_are_calibrated_and_sst2_test_ece_is_at_most_five_points(
    sentiment: SentimentTransformer,
) -> None:
    import numpy as np

    record = read_calibration(SENTIMENT_ARTEFACT_DIR)
    assert record is not None
    assert sentiment.temperature == record["temperature"] != 1.0
    rows = read_sst2(DEFAULT_SST2_DIR / "test.tsv")
    texts, labels = [text for text, _ in rows], [label for _, label in rows]
    logits = np.asarray(sentiment.logits(texts))
    served = [
        [p.scores[label] for label in ("negative", "positive")]
        for p in sentiment.predict(texts)
        if p.scores
    ]
    assert np.asarray(served) == pytest.approx(softmax(logits, sentiment.temperature), abs=1e-9)
    assert ece(logits, labels, sentiment.temperature) <= 0.05
    assert ece(logits, labels, sentiment.temperature) < ece(logits, labels)


def test_normalise_composes_unicode_and_collapses_whitespace() -> None:
    assert normalise("  Cafe\u0301\u00a0 is\n\tgreat  ") == "Caf\u00e9 is great"


def test_importing_the_adapters_does_not_import_torch() -> None:
    code = "import sys, core.inference.transformer; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_precision_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from core.inference import transformer

    cpu = torch.device("cpu")
    assert transformer.resolve_precision("fp32", cpu) is None
    assert transformer.resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        transformer.resolve_precision("fp16", cpu)  # CPU fp16 kernels are emulated: refuse
    # auto follows the CPU's instructions: bf16 only where it is native, else fp32.
    monkeypatch.setattr(transformer, "cpu_has_native_bf16", lambda: True)
    assert transformer.resolve_precision("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(transformer, "cpu_has_native_bf16", lambda: False)
    assert transformer.resolve_precision("auto", cpu) is None


def test_bf16_keeps_sst2_accuracy_within_a_point_of_fp32(sentiment: SentimentTransformer) -> None:
    from core.inference.evaluation import DEFAULT_SST2_DIR, evaluate_adapter

    bf16 = SentimentTransformer.load(device="cpu", precision="bf16")
    assert (bf16.precision, sentiment.precision) == ("bf16", "fp32")
    full = evaluate_adapter(sentiment, DEFAULT_SST2_DIR)["accuracy"]
    half = evaluate_adapter(bf16, DEFAULT_SST2_DIR)["accuracy"]
    assert full > 0.85
    assert abs(half - full) < 0.01


def test_bf16_scores_are_fp32_probabilities_close_to_the_fp32_model(
    sentiment: SentimentTransformer,
) -> None:
    bf16 = SentimentTransformer.load(device="cpu", precision="bf16")
    for full, half in zip(
        sentiment.predict(MIXED_LENGTHS), bf16.predict(MIXED_LENGTHS), strict=True
    ):
        assert half.scores is not None
        assert math.isclose(sum(half.scores.values()), 1.0, rel_tol=1e-6)  # the head ran in fp32
        assert half.score == pytest.approx(full.score, abs=0.05)


def test_bf16_embeddings_are_unit_vectors_pointing_as_fp32_ones(embedder: SentenceEmbedder) -> None:
    bf16 = SentenceEmbedder.load(device="cpu", precision="bf16")
    texts = [text for text in MIXED_LENGTHS if text]
    for full, half in zip(embedder.predict(texts), bf16.predict(texts), strict=True):
        assert full.embedding is not None and half.embedding is not None
        assert math.sqrt(sum(x * x for x in half.embedding)) == pytest.approx(1.0, abs=1e-5)
        assert sum(a * b for a, b in zip(full.embedding, half.embedding, strict=True)) > 0.99
