"""The ONNX Runtime tiers, exported for real from the shipped artefact into a temporary cache and
held against the torch fp32 model they come from."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.inference import onnx_transformer
from core.inference.calibration import softmax
from core.inference.evaluation import DEFAULT_SST2_DIR, read_sst2
from core.inference.onnx_export import onnx_version
from core.inference.onnx_transformer import (
    OnnxInt8SentimentTransformer,
    OnnxSentenceEmbedder,
    OnnxSentimentTransformer,
)
from core.inference.transformer import (
    SENTIMENT_ARTEFACT_DIR,
    SentenceEmbedder,
    SentimentTransformer,
    weights_version,
)

# Export needs the `model` extra; an API-only install skips rather than fails.
pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# SST-2 test sentences in file order: mixed lengths, so one predict call pads, sorts and restores.
SENTENCES = [text for text, _ in read_sst2(DEFAULT_SST2_DIR / "test.tsv")[:40]]
# Both sides run the same fp32 weights; only kernels and summation order differ, which moves
# logits by about 4e-6 (measured over all 872 test sentences). 1e-4 leaves room for other CPUs'
# kernels while a real export fault (a lost mask, the wrong pooling) moves scores by >= 1e-2.
FP32_SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def torch_fp32() -> Iterator[SentimentTransformer]:
    yield SentimentTransformer.load(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def onnx_fp32(cache_dir: Path) -> Iterator[OnnxSentimentTransformer]:
    yield OnnxSentimentTransformer.load(device="cpu", cache_dir=cache_dir)


def test_onnx_agrees_with_the_torch_fp32_model(
    torch_fp32: SentimentTransformer, onnx_fp32: OnnxSentimentTransformer
) -> None:
    expected = torch_fp32.predict(SENTENCES)
    got = onnx_fp32.predict(SENTENCES)

    assert [p.label for p in got] == [p.label for p in expected]
    for onnx_prediction, torch_prediction in zip(got, expected, strict=True):
        assert onnx_prediction.scores is not None and torch_prediction.scores is not None
        assert math.isclose(sum(onnx_prediction.scores.values()), 1.0, rel_tol=1e-6)
        for label, score in torch_prediction.scores.items():
            assert onnx_prediction.scores[label] == pytest.approx(score, abs=FP32_SCORE_TOLERANCE)


def test_both_runtimes_serve_the_calibrated_score(
    torch_fp32: SentimentTransformer, onnx_fp32: OnnxSentimentTransformer
) -> None:
    import numpy as np

    temperature = onnx_fp32.temperature
    assert temperature == torch_fp32.temperature != 1.0  # the shipped calibration.json's T
    expected = softmax(np.asarray(torch_fp32.logits(SENTENCES[:8])), temperature)
    for runtime in (torch_fp32, onnx_fp32):
        served = [p.scores for p in runtime.predict(SENTENCES[:8])]
        got = [[s["negative"], s["positive"]] for s in served if s is not None]
        assert np.asarray(got) == pytest.approx(expected, abs=FP32_SCORE_TOLERANCE)


def test_loaded_onnx_model_reports_its_runtime_and_file_version(
    onnx_fp32: OnnxSentimentTransformer,
) -> None:
    assert onnx_fp32.name == "minilm-l6-sst2-onnx"
    assert (onnx_fp32.runtime, onnx_fp32.precision) == ("onnxruntime", "fp32")
    assert onnx_fp32.version == OnnxSentimentTransformer.current_version()


def test_the_exported_graph_runs_fused_attention(
    onnx_fp32: OnnxSentimentTransformer, cache_dir: Path
) -> None:
    import onnx

    # Named by the weights it holds, not the served (calibrated) version: recalibrating reuses it.
    graph = onnx_version(weights_version(SENTIMENT_ARTEFACT_DIR), "fp32")
    (path,) = cache_dir.glob(f"minilm-l6-sst2-onnx-{graph}.onnx")
    ops = [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]
    # A transformers upgrade that changes the attention pattern would still export, unfused and
    # 1.4x slower: this says so.
    assert ops.count("Attention") == 6
    assert ops.count("EmbedLayerNormalization") == 1


def test_a_cached_graph_is_served_without_exporting_again(
    onnx_fp32: OnnxSentimentTransformer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_export(*args: object) -> None:
        raise AssertionError("exported although the graph was cached")

    monkeypatch.setattr(onnx_transformer, "export_graph", no_export)
    again = OnnxSentimentTransformer.load(device="cpu", cache_dir=cache_dir)
    for a, b in zip(again.predict(SENTENCES[:3]), onnx_fp32.predict(SENTENCES[:3]), strict=True):
        assert a.label == b.label
        assert a.score == pytest.approx(b.score, abs=1e-6)


def test_int8_keeps_nearly_every_label_and_has_its_own_version(
    onnx_fp32: OnnxSentimentTransformer, cache_dir: Path
) -> None:
    int8 = OnnxInt8SentimentTransformer.load(device="cpu", cache_dir=cache_dir)
    same = sum(
        a.label == b.label
        for a, b in zip(int8.predict(SENTENCES), onnx_fp32.predict(SENTENCES), strict=True)
    )
    # 98.9 % of SST-2 test labels agree; a broken quantisation lands near chance.
    assert same >= 0.9 * len(SENTENCES)
    assert int8.version == OnnxInt8SentimentTransformer.current_version() != onnx_fp32.version
    assert (int8.name, int8.precision) == ("minilm-l6-sst2-onnx-int8", "int8")


def test_onnx_embeddings_are_the_torch_embeddings(cache_dir: Path) -> None:
    texts = SENTENCES[:8]
    expected = SentenceEmbedder.load(device="cpu", precision="fp32").predict(texts)
    got = OnnxSentenceEmbedder.load(device="cpu", cache_dir=cache_dir).predict(texts)

    for onnx_prediction, torch_prediction in zip(got, expected, strict=True):
        onnx_vector, torch_vector = onnx_prediction.embedding, torch_prediction.embedding
        assert onnx_vector is not None and torch_vector is not None
        assert len(onnx_vector) == 384
        assert sum(a * b for a, b in zip(onnx_vector, torch_vector, strict=True)) > 0.9999


def test_the_torch_free_bf16_probe_agrees_with_torch() -> None:
    from core.inference.transformer import cpu_has_native_bf16

    assert onnx_transformer.cpu_native_bf16() == cpu_has_native_bf16()
