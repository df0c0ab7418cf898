"""How much micro-batching buys: the same texts through the model one at a time, through the
engine in the micro-batches a worker would form, and through the bare model 64 at a time.

One process, no services, the configured precision (``INFERQ_PRECISION``, auto by default) for
every variant. (a) ``SentimentTransformer.predict([t])`` per text; (b)
``InferenceEngine.run("sentiment", batch)`` where each batch is what a worker with a backlog
hands the engine: whole messages of ``chunk_size`` items, up to the policy's ``max_items`` and
token budget; (c) ``SentimentTransformer.predict(chunk)`` over chunks of 64 in file order; (d)
``SentimentTransformer.predict(texts)`` over all texts at once, which sorts all of them by length
before cutting passes of 64: the least padding any loop over this model can have.

    python -m bench.batching_gain --n 10000
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
from core.config import BatchPolicy, get_settings
from core.inference.engine import InferenceEngine, Output
from core.jobs.outbox import estimate_tokens

TARGET_RATIO = 6.0
TASK = "sentiment"


def worker_batches(texts: Sequence[str], chunk_size: int, policy: BatchPolicy) -> list[list[str]]:
    """Micro-batches as a worker with a backlog forms them (``workers.batching``): the API cuts
    a job into messages of ``chunk_size`` inputs; a batch takes whole messages in arrival order
    while its inputs stay within ``max_items`` and its estimated tokens within ``token_budget``
    (always at least one message)."""
    batches: list[list[str]] = []
    current: list[str] = []
    tokens = 0
    for message in chunked(texts, chunk_size):
        message_tokens = sum(estimate_tokens(text) for text in message)
        full = len(current) + len(message) > policy.max_items or (
            tokens + message_tokens > policy.token_budget
        )
        if current and full:
            batches.append(current)
            current, tokens = [], 0
        current += message
        tokens += message_tokens
    if current:
        batches.append(current)
    return batches


def timed(label: str, work: Callable[[], int], repeats: int) -> tuple[float, int]:
    """Best wall time of ``repeats`` runs of ``work`` (which returns how many outputs it made)."""
    best = float("inf")
    produced = 0
    for attempt in range(repeats):
        started = time.perf_counter()
        produced = work()
        elapsed = time.perf_counter() - started
        best = min(best, elapsed)
        log(f"{label}: run {attempt + 1}/{repeats} {elapsed:.2f}s ({produced / elapsed:,.1f}/s)")
    return best, produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="distinct texts (default 10000)")
    parser.add_argument("--bare-batch", type=int, default=64, help="chunk size of (c)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs each")
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()

    from core.inference.transformer import SentimentTransformer

    settings = get_settings()
    policy = settings.batch_policy(TASK)
    texts = load_texts(args.n)
    machine = machine_facts()

    log("loading the bare model and the engine")
    model = SentimentTransformer.load(device="cpu")
    engine = InferenceEngine("cpu", circuits=None, policies=settings.batching)
    model.predict(texts[: args.bare_batch])  # warm up: first calls allocate and tune kernels
    engine.run(TASK, texts[: args.bare_batch])
    batches = worker_batches(texts, settings.chunk_size, policy)

    def one_at_a_time() -> int:
        return sum(len(model.predict([text])) for text in texts)

    def through_engine() -> int:
        outcomes = [outcome for batch in batches for outcome in engine.run(TASK, batch)]
        primary = [o for o in outcomes if isinstance(o, Output) and o.tier == "primary"]
        if len(primary) != len(texts):
            raise RuntimeError(f"engine: {len(primary)} primary results for {len(texts)} texts")
        return len(outcomes)

    def bare_batched() -> int:
        return sum(len(model.predict(chunk)) for chunk in chunked(texts, args.bare_batch))

    def bare_sorted() -> int:
        model.batch_size = args.bare_batch
        return len(model.predict(texts))

    single_s, _ = timed("one at a time", one_at_a_time, args.repeats)
    engine_s, _ = timed("engine", through_engine, args.repeats)
    bare_s, _ = timed(f"bare x{args.bare_batch}", bare_batched, args.repeats)
    sorted_s, _ = timed(f"bare all sorted x{args.bare_batch}", bare_sorted, args.repeats)

    n = len(texts)
    single_rate, engine_rate, bare_rate = rate(n, single_s), rate(n, engine_s), rate(n, bare_s)
    sorted_rate = rate(n, sorted_s)
    sizes = [len(b) for b in batches]
    results: dict[str, Any] = {
        "n": n,
        "one_at_a_time": {"seconds": round(single_s, 3), "texts_per_s": round(single_rate, 2)},
        "engine": {
            "seconds": round(engine_s, 3),
            "texts_per_s": round(engine_rate, 2),
            "micro_batches": len(batches),
            "mean_batch_items": round(n / len(batches), 2),
            "max_batch_items": max(sizes),
            "policy": policy.model_dump(),
            "chunk_size": settings.chunk_size,
        },
        "bare_batched": {
            "batch": args.bare_batch,
            "seconds": round(bare_s, 3),
            "texts_per_s": round(bare_rate, 2),
        },
        "bare_all_sorted": {
            "batch": args.bare_batch,
            "seconds": round(sorted_s, 3),
            "texts_per_s": round(sorted_rate, 2),
        },
        "precision": engine.primary(TASK).precision,  # type: ignore[attr-defined]
        "ratio_engine_vs_one_at_a_time": round(engine_rate / single_rate, 2),
        "ratio_bare_batched_vs_one_at_a_time": round(bare_rate / single_rate, 2),
        "ratio_bare_all_sorted_vs_one_at_a_time": round(sorted_rate / single_rate, 2),
        "ratio_engine_vs_bare_batched": round(engine_rate / bare_rate, 3),
        "ratio_engine_vs_bare_all_sorted": round(engine_rate / sorted_rate, 3),
    }
    results["meets_target"] = results["ratio_engine_vs_one_at_a_time"] >= TARGET_RATIO
    emit(
        "batching_gain",
        params=base_params(args),
        machine=machine,
        results=results,
        targets={"ratio_engine_vs_one_at_a_time": f">= {TARGET_RATIO}"},
        table=[
            ("texts", n),
            ("one at a time  texts/s", single_rate),
            ("engine         texts/s", engine_rate),
            (f"bare x{args.bare_batch}       texts/s", bare_rate),
            ("engine / one-at-a-time", results["ratio_engine_vs_one_at_a_time"]),
            (f"bare sorted x{args.bare_batch} texts/s", sorted_rate),
            ("precision", results["precision"]),
            (
                f"bare{args.bare_batch} / one-at-a-time",
                results["ratio_bare_batched_vs_one_at_a_time"],
            ),
            ("bare sorted / one-at-a-time", results["ratio_bare_all_sorted_vs_one_at_a_time"]),
            ("engine / bare64", results["ratio_engine_vs_bare_batched"]),
            ("engine / bare sorted", results["ratio_engine_vs_bare_all_sorted"]),
            (f"target engine/one >= {TARGET_RATIO}", results["meets_target"]),
        ],
    )


if __name__ == "__main__":
    main()
