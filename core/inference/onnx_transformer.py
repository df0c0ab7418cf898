"""ONNX Runtime twins of the transformer tiers (`sentiment`, `embed`), for CPU workers.

The graph is exported from what ships (the fine-tuned MiniLM + head that
`SentimentTransformer` serves, or the bare encoder with its pooling) the first time a worker loads
it, into ``INFERQ_DATA_DIR/onnx`` under its version, and reused from there: a fresh install serves
ONNX without a manual step and nothing is downloaded (`onnx_export` makes and caches the graphs).
Export needs torch (the `model` extra); serving a cached graph needs onnxruntime and the tokenizer.

Text reaches the graph through the torch tiers' own path (`TokenisedBatches`: `tokenise`, length
sorting, `pad_arrays`), and outputs become the same `Prediction`s, scored softmax(logits / T) with
the artefact's calibrated T, so the two runtimes differ only in the kernels that run the encoder.
A graph holds weights only: it is named by the weights' version and survives recalibration.

torch, onnx and onnxruntime are imported inside functions only: the registry imports this module
in the API process to choose the runtime and to name versions.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from core.config import Settings, get_settings
from core.inference.onnx_export import (
    cached_export,
    embedding_module,
    export_graph,
    onnx_version,
    quantise_graph,
)
from core.inference.transformer import (
    BASE_MODEL_NAME,
    SENTIMENT_ARTEFACT_DIR,
    TokenisedBatches,
    artefact_version,
    calibrated_predictions,
    check_base_model,
    embedder_version,
    load_encoder,
    load_sentiment_model,
    load_tokenizer,
    pad_arrays,
    read_model_card,
    served_temperature,
    weights_version,
)
from core.inference.types import Prediction

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import onnxruntime
    from transformers import PreTrainedTokenizerBase

Runtime = Literal["torch", "onnx"]


# ------------------------------------------------------------------------------- runtime choice


def choose_runtime(
    requested: str,
    device: str,
    precision: str,
    *,
    gpu_visible: bool,
    cpu_native_bf16: bool,
    onnx_installed: bool,
) -> Runtime:
    """The runtime of the transformer tiers. ``auto`` picks ONNX Runtime where it was measured
    at least as fast at the same accuracy: on CPU when torch would run fp32.

    Indicative figures (one thread on 2 shared, loaded AMD EPYC cores with AVX512-BF16,
    2026-12-03; bench/precision.py, best of 3 interleaved rounds): SST-2 test accuracy onnx fp32
    88.07 %, every label as torch fp32's (88.07 %), logits within 4e-6 (the full fine-tune
    primary of 2026-12-05: 89.91 % both). Texts/s over the
    benchmark texts, torch fp32 / torch bf16 / onnx: one at a time 74 / 83 / 155; batches of 64
    in file order 67 / 111 / 72, of 32 82 / 146 / 90; SST-2 test sorted by length in passes of 32
    (little padding, as the engine cuts them) 80 / 151 / 118. ONNX is never slower than torch
    fp32 and twice as fast one at a time (far less per-call overhead); in long padded batches the
    matrix products dominate and both run them alike. Where the CPU has native bf16, torch bf16
    (88.19 %) is 1.3-1.6x onnx in batches, which is what a busy worker runs: auto keeps torch.
    On CUDA, torch: this onnxruntime build runs on CPU only. `embed` follows the same rule (the
    same encoder; its pooling is negligible next to it).

    Each process decides for its own machine. An API host unlike the workers' (no GPU where they
    have one) then names another primary version than they do: its submit-time cache lookups
    miss, results stay correct. Set INFERQ_RUNTIME explicitly where the two differ.
    """
    if requested in ("torch", "onnx"):
        return "onnx" if requested == "onnx" else "torch"
    on_gpu = device.startswith("cuda") or (device == "auto" and gpu_visible)
    if on_gpu or not onnx_installed or precision in ("bf16", "fp16"):
        return "torch"
    if precision == "auto" and cpu_native_bf16:
        return "torch"
    return "onnx"


def runtime_for(settings: Settings) -> Runtime:
    """`choose_runtime` for this machine, probed without torch and without touching CUDA."""
    return choose_runtime(
        settings.runtime,
        settings.device,
        settings.precision,
        gpu_visible=gpu_visible(),
        cpu_native_bf16=cpu_native_bf16(),
        onnx_installed=onnx_installed(),
    )


@cache
def gpu_visible() -> bool:
    """An NVIDIA GPU this process may use, seen from device files (no driver call, no fork risk)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists() or any(Path("/proc/driver/nvidia/gpus").glob("*"))


@cache
def cpu_native_bf16() -> bool:
    """AVX512-BF16 or AMX, from the kernel's CPU flags: what `cpu_has_native_bf16` asks torch."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:  # not Linux: count it as a CPU without the instructions
        return False
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16", "amx_tile"} & set(flags))


@cache
def onnx_installed() -> bool:
    """Whether the ONNX packages are installed, found without importing them."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


# -------------------------------------------------------------------------------------- serving


def default_cache_dir() -> Path:
    return get_settings().data_dir / "onnx"


def intra_op_threads(settings: Settings) -> int:
    """The torch tiers' share of cores (workers/app.py): INFERQ_TORCH_THREADS, else cores
    divided among the worker's pool processes, so that processes never oversubscribe cores."""
    return settings.torch_threads or max(
        1, (os.cpu_count() or 1) // settings.resolved_worker_concurrency
    )


def open_session(path: Path) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads(get_settings())
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_cpu(device: str, precision: str | None) -> None:
    if device not in ("cpu", "auto"):
        raise ValueError(f"the ONNX tiers run on CPU only, not {device!r} (INFERQ_RUNTIME=torch)")
    if (precision or get_settings().precision) not in ("auto", "fp32"):
        raise ValueError("the ONNX tiers run fp32 (or int8 weights): set INFERQ_RUNTIME=torch")


class _OnnxBatches(TokenisedBatches):
    """The ONNX Runtime runtime: one session on CPU, batches fed as int64 numpy arrays."""

    runtime = "onnxruntime"
    precision = "fp32"
    output: str

    def __init__(
        self,
        *,
        name: str,
        version: str,
        tokenizer: PreTrainedTokenizerBase,
        session: onnxruntime.InferenceSession,
    ) -> None:
        super().__init__(name=name, version=version, tokenizer=tokenizer)
        self._session = session

    def _outputs(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        input_ids, mask = pad_arrays(sequences, self.pad_id)
        feed = {"input_ids": input_ids, "attention_mask": mask}
        outputs: npt.NDArray[np.float32] = self._session.run([self.output], feed)[0]
        return outputs


class OnnxSentimentTransformer(_OnnxBatches):
    """`sentiment` primary tier on ONNX Runtime: the torch tier's merged model, exported."""

    output = "logits"
    variant = "fp32"  # what the version and the model name say about the graph
    suffix = "-onnx"
    temperature: float = 1.0  # set by load() from calibration.json, as the torch tier's

    @classmethod
    def current_version(cls) -> str:
        return onnx_version(artefact_version(SENTIMENT_ARTEFACT_DIR), cls.variant)

    @classmethod
    def load(
        cls,
        artefact_dir: Path | None = None,
        device: str = "cpu",
        precision: str | None = None,
        cache_dir: Path | None = None,
    ) -> Self:
        _check_cpu(device, precision)
        directory = artefact_dir or SENTIMENT_ARTEFACT_DIR
        check_base_model(directory)  # a cached graph must not outlive the base model it holds
        tokenizer = load_tokenizer()
        name = f"{read_model_card(directory)['name']}{cls.suffix}"
        version = onnx_version(artefact_version(directory), cls.variant)
        path = cls._graph(directory, tokenizer, cache_dir or default_cache_dir(), name)
        model = cls(name=name, version=version, tokenizer=tokenizer, session=open_session(path))
        model.temperature = served_temperature(directory)
        return model

    @classmethod
    def _graph(
        cls, directory: Path, tokenizer: PreTrainedTokenizerBase, cache_dir: Path, _name: str
    ) -> Path:
        return _sentiment_graph(directory, tokenizer, cache_dir)

    def _run_batch(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        logits: list[list[float]] = self._outputs(sequences).tolist()
        return logits

    def logits(self, texts: Sequence[str]) -> list[list[float]]:
        """The graph's raw outputs per text, before any temperature."""
        return self._rows(texts)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return calibrated_predictions(self._rows(texts), self.temperature)


class OnnxInt8SentimentTransformer(OnnxSentimentTransformer):
    """The ONNX sentiment graph with INT8 weights; select it with INFERQ_TASKS, like the torch
    INT8 tier. Its U8S8 kernels can saturate on x86 CPUs without VNNI: measure accuracy there
    (bench/precision.py) before serving it."""

    precision = "int8"
    variant = "int8-dynamic"
    suffix = "-onnx-int8"

    @classmethod
    def _graph(
        cls, directory: Path, tokenizer: PreTrainedTokenizerBase, cache_dir: Path, name: str
    ) -> Path:
        fp32 = _sentiment_graph(directory, tokenizer, cache_dir)
        graph = onnx_version(weights_version(directory), cls.variant)
        return cached_export(
            cache_dir / f"{name}-{graph}.onnx", lambda to: quantise_graph(fp32, to)
        )


def _sentiment_graph(directory: Path, tokenizer: PreTrainedTokenizerBase, cache_dir: Path) -> Path:
    name = f"{read_model_card(directory)['name']}-onnx"
    target = cache_dir / f"{name}-{onnx_version(weights_version(directory), 'fp32')}.onnx"

    def write(to: Path) -> None:
        export_graph(load_sentiment_model(directory, "eager"), tokenizer, "logits", to)

    return cached_export(target, write)


class OnnxSentenceEmbedder(_OnnxBatches):
    """`embed` primary tier on ONNX Runtime: pooling and normalisation are inside the graph."""

    output = "embedding"

    @classmethod
    def current_version(cls) -> str:
        return onnx_version(embedder_version(), "fp32")

    @classmethod
    def load(
        cls, device: str = "cpu", precision: str | None = None, cache_dir: Path | None = None
    ) -> OnnxSentenceEmbedder:
        _check_cpu(device, precision)
        tokenizer = load_tokenizer()
        name, version = f"{BASE_MODEL_NAME}-onnx", onnx_version(embedder_version(), "fp32")

        def write(to: Path) -> None:
            model = embedding_module(load_encoder("eager"))
            export_graph(model, tokenizer, "embedding", to)

        path = cached_export((cache_dir or default_cache_dir()) / f"{name}-{version}.onnx", write)
        return cls(name=name, version=version, tokenizer=tokenizer, session=open_session(path))

    def _run_batch(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        embeddings: list[list[float]] = self._outputs(sequences).tolist()
        return embeddings

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [Prediction(embedding=row) for row in self._rows(texts)]
