"""What each numeric variant of the sentiment transformer costs and buys on this CPU: fp32,
bf16 autocast and INT8 dynamic quantisation, each measured for SST-2 test accuracy and for
throughput over the same texts, one at a time and in batches of 64.

One process, no services; every variant runs in the same run, so the ratios compare like with
like. ``INFERQ_PRECISION=auto`` picks bf16 only where the CPU has native bf16 instructions
(``cpu_native_bf16`` in the output); forcing bf16 elsewhere is measured here too, slowly.

    python -m bench.precision --n 2000
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()

    from core.inference.transformer import (
        QuantizedSentimentTransformer,
        SentimentTransformer,
        cpu_has_native_bf16,
    )

    texts = load_texts(args.n)
    machine = machine_facts()
    variants: dict[str, Any] = {
        "fp32": lambda: SentimentTransformer.load(device="cpu", precision="fp32"),
        "bf16": lambda: SentimentTransformer.load(device="cpu", precision="bf16"),
        "int8": lambda: QuantizedSentimentTransformer.load(device="cpu"),
    }
    results: dict[str, Any] = {"cpu_native_bf16": cpu_has_native_bf16(), "variants": {}}
    for name, load in variants.items():
        log(f"{name}: loading")
        model = load()
        model.predict(texts[:BATCH])  # warm up: first calls allocate and pick kernels
        accuracy = evaluate_adapter(model, DEFAULT_SST2_DIR)["accuracy"]
        single = throughput(model.predict, [[text] for text in texts[: args.single]])
        batched = throughput(model.predict, chunked(texts, BATCH))
        log(
            f"{name}: accuracy {accuracy:.4f}, 1 at a time {single:.1f}/s, x{BATCH} {batched:.1f}/s"
        )
        results["variants"][name] = {
            "version": model.version,
            "sst2_test_accuracy": round(accuracy, 4),
            "one_at_a_time_texts_per_s": round(single, 2),
            f"batched_{BATCH}_texts_per_s": round(batched, 2),
            "batching_gain": round(batched / single, 2),
        }
    fp32 = results["variants"]["fp32"][f"batched_{BATCH}_texts_per_s"]
    for record in results["variants"].values():
        record["batched_speed_vs_fp32"] = round(record[f"batched_{BATCH}_texts_per_s"] / fp32, 2)

    emit(
        "precision",
        params=base_params(args),
        machine=machine,
        results=results,
        targets={},
        table=[("cpu native bf16", results["cpu_native_bf16"])]
        + [
            (f"{name:<5} {label}", record[key])
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
