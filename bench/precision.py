"""What each numeric variant of the sentiment transformer costs and buys on this CPU: torch fp32,
bf16 autocast and INT8 dynamic quantisation, and the ONNX Runtime export in fp32 and with INT8
weights, each measured for SST-2 test accuracy and for throughput over the same texts, one at a
time and in batches of 64 (file order; each runtime sorts a batch by length the same way).

One process, no services; every variant runs in the same run, with the same thread count (torch
threads = onnxruntime intra-op threads), so the ratios compare like with like.
``INFERQ_PRECISION=auto`` picks bf16 only where the CPU has native bf16 instructions
(``cpu_native_bf16`` in the output); forcing bf16 elsewhere is measured here too, slowly.
``runtime_auto`` is what ``INFERQ_RUNTIME=auto`` picks on this machine. The ONNX variants export
into INFERQ_DATA_DIR/onnx on their first load (``load_seconds``), then load from there.

    python -m bench.precision --n 2000
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import (
    base_params,
    chunked,
    emit,
    install_signal_handlers,
    load_texts,
    log,
    machine_facts,
    quiet_logging,
    rate,
)
from core.inference.evaluation import DEFAULT_SST2_DIR, evaluate_adapter
from core.inference.types import Prediction

BATCH = 64


def _torch(precision: str) -> Any:
    from core.inference.transformer import SentimentTransformer

    return SentimentTransformer.load(device="cpu", precision=precision)


def _torch_int8() -> Any:
    from core.inference.transformer import QuantizedSentimentTransformer

    return QuantizedSentimentTransformer.load(device="cpu")


def _onnx() -> Any:
    from core.inference.onnx_transformer import OnnxSentimentTransformer

    return OnnxSentimentTransformer.load(device="cpu", precision="fp32")


def _onnx_int8() -> Any:
    from core.inference.onnx_transformer import OnnxInt8SentimentTransformer

    return OnnxInt8SentimentTransformer.load(device="cpu", precision="fp32")


VARIANTS: dict[str, Callable[[], Any]] = {
    "fp32": lambda: _torch("fp32"),
    "bf16": lambda: _torch("bf16"),
    "int8": _torch_int8,
    "onnx": _onnx,
    "onnx-int8": _onnx_int8,
}


def throughput(
    predict: Callable[[Sequence[str]], list[Prediction]], batches: list[list[str]]
) -> float:
    started = time.perf_counter()
    produced = sum(len(predict(batch)) for batch in batches)
    return rate(produced, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="texts for the batched rate")
    parser.add_argument("--single", type=int, default=300, help="texts for the one-at-a-time rate")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own count")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()

    import onnxruntime
    import torch

    from core.config import get_settings
    from core.inference.onnx_transformer import runtime_for
    from core.inference.transformer import cpu_has_native_bf16

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    os.environ["INFERQ_TORCH_THREADS"] = str(threads)  # the ONNX sessions' intra-op threads
    get_settings.cache_clear()
    texts = load_texts(args.n)
    machine = machine_facts()
    results: dict[str, Any] = {
        "cpu_native_bf16": cpu_has_native_bf16(),
        "runtime_auto": runtime_for(get_settings()),
        "onnxruntime": onnxruntime.__version__,
        "threads": threads,
        "variants": {},
    }
    for name in args.variants.split(","):
        log(f"{name}: loading")
        started = time.perf_counter()
        model = VARIANTS[name]()
        load_seconds = time.perf_counter() - started
        model.predict(texts[:BATCH])  # warm up: first calls allocate and pick kernels
        accuracy = evaluate_adapter(model, DEFAULT_SST2_DIR)["accuracy"]
        single = throughput(model.predict, [[text] for text in texts[: args.single]])
        batched = throughput(model.predict, chunked(texts, BATCH))
        log(
            f"{name}: accuracy {accuracy:.4f}, 1 at a time {single:.1f}/s, x{BATCH} {batched:.1f}/s"
        )
        results["variants"][name] = {
            "model": model.name,
            "version": model.version,
            "load_seconds": round(load_seconds, 1),
            "sst2_test_accuracy": round(accuracy, 4),
            "one_at_a_time_texts_per_s": round(single, 2),
            f"batched_{BATCH}_texts_per_s": round(batched, 2),
            "batching_gain": round(batched / single, 2),
        }
    rate_key = f"batched_{BATCH}_texts_per_s"
    fp32 = results["variants"].get("fp32", {}).get(rate_key)
    for record in results["variants"].values():
        if fp32:
            record["batched_speed_vs_fp32"] = round(record[rate_key] / fp32, 2)

    emit(
        "precision",
        params=base_params(args),
        machine=machine,
        results=results,
        targets={},
        table=[
            ("cpu native bf16", results["cpu_native_bf16"]),
            ("INFERQ_RUNTIME=auto picks", results["runtime_auto"]),
            ("threads", threads),
        ]
        + [
            (f"{name:<9} {label}", record.get(key, "-"))
            for name, record in results["variants"].items()
            for label, key in (
                ("SST-2 accuracy", "sst2_test_accuracy"),
                ("1-at-a-time /s", "one_at_a_time_texts_per_s"),
                (f"batched x{BATCH} /s", f"batched_{BATCH}_texts_per_s"),
                ("batched vs fp32", "batched_speed_vs_fp32"),
            )
        ],
    )


if __name__ == "__main__":
    main()
