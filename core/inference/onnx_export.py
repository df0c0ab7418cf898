"""Exporting the transformer tiers' torch models to ONNX, fused for onnxruntime's CPU kernels,
and the cache the graphs live in: one file per version, written once however many processes ask.

torch, onnx and onnxruntime are imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from core.inference.transformer import base_model_dir, mean_pool, pad_batch, tokenise

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

OPSET = 17
# How the graph is made; part of the version, so change it whenever the graph can change.
# The TorchScript exporter with eager attention yields the attention pattern that onnxruntime's
# BERT fusion turns into its fused Attention and EmbedLayerNormalization kernels (1.4x the
# batched speed of the unfused graph); the SDPA graph of the dynamo exporter is not fused.
EXPORT_RECIPE = "torchscript-eager-attention+ort-bert-fusion"
INPUTS = ("input_ids", "attention_mask")
# INT8: weights per channel, Linear layers only (MatMul, and the fused Attention's projections),
# as torch's dynamic quantisation does. On SST-2 test it kept 98.9 % of fp32's labels; per-tensor
# weights kept 96.3 %, and quantising the embeddings too gained speed at 98.4 %.
INT8_OP_TYPES = ["MatMul", "Attention"]


def onnx_version(model_version: str, quantisation: str) -> str:
    """12 hex naming the weights (the torch tier's version), the runtime and how it was exported:
    never shared with the torch tier's cached results, nor fp32's with int8's."""
    recipe = f"{model_version}\0onnxruntime\0opset{OPSET}\0{EXPORT_RECIPE}\0{quantisation}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def cached_export(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, written by `write(temporary path)` unless it exists already.

    Pool processes starting together export once: the others wait on a lock, then read what the
    first wrote. The file appears complete or not at all (written aside, synced, renamed), so a
    reader that skips the lock (a filesystem where locks do nothing) never sees half a graph."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_name(f"{target.name}.lock")):
        if target.exists():  # exported by another process while this one waited
            return target
        # Only lock holders write, so what an earlier writer left here died with it.
        for leftover in target.parent.glob(f".{target.name}.*"):
            leftover.unlink(missing_ok=True)
        aside = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            write(aside)
            with aside.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(aside, target)
        finally:
            aside.unlink(missing_ok=True)
    return target


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    import fcntl

    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the OS if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def export_graph(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, output: str, target: Path
) -> None:
    """Export `model(input_ids, attention_mask) -> output` with dynamic batch and sequence axes,
    then fuse it with onnxruntime's BERT optimiser into `target`."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    model.eval()
    sample = tokenise(tokenizer, ["an export sample", "a longer sample, so that one row pads"])
    input_ids, mask = pad_batch(sample, int(tokenizer.pad_token_id), torch.device("cpu"))
    dynamic = {"batch": 0, "sequence": 1}
    raw = target.with_name(f"{target.name}.raw")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated (the dynamo one does not fuse, see
            # EXPORT_RECIPE) but complete in the pinned torch 2.13; its tracer warns about
            # Python conditions it records as constants, which hold for every padded batch.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (input_ids, mask),
                str(raw),
                dynamo=False,
                input_names=list(INPUTS),
                output_names=[output],
                opset_version=OPSET,
                dynamic_axes={
                    **{name: {axis: label for label, axis in dynamic.items()} for name in INPUTS},
                    output: {0: "batch"},
                },
            )
        config = json.loads((base_model_dir() / "config.json").read_text(encoding="utf-8"))
        fused = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=int(config["num_attention_heads"]),
            hidden_size=int(config["hidden_size"]),
            opt_level=0,  # fusions only: the session applies its own optimisations at load
        )
        fused.save_model_to_file(str(target))
    finally:
        raw.unlink(missing_ok=True)


def quantise_graph(source: Path, target: Path) -> None:
    """INT8 dynamic quantisation of `source`'s weights (see INT8_OP_TYPES)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=INT8_OP_TYPES,
        per_channel=True,
        weight_type=QuantType.QInt8,
        # Shape inference cannot type the fused contrib ops' outputs; they are all fp32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def embedding_module(encoder: torch.nn.Module) -> torch.nn.Module:
    """`encoder` with the pooling `SentenceEmbedder` applies, as one module to export."""
    return _embedding_type()(encoder)


@cache
def _embedding_type() -> type[torch.nn.Module]:
    """Defined on first use because subclassing torch.nn.Module needs torch imported."""
    import torch

    class MeanPoolEmbedding(torch.nn.Module):
        """Encoder -> mean pooling -> L2 normalisation: what `SentenceEmbedder` computes."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
            pooled = mean_pool(hidden.last_hidden_state, attention_mask)
            return torch.nn.functional.normalize(pooled, p=2, dim=-1)

    return MeanPoolEmbedding
