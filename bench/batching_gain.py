"""How much micro-batching buys, against what batching can buy on this machine: the same texts
through the model one at a time, through the engine in the micro-batches a worker would form,
and through the bare model's best batched loop.

One process, no services. Every variant runs the engine's own primary adapter for the task (the
class and precision that ``INFERQ_RUNTIME`` and ``INFERQ_PRECISION`` select, loaded once bare and
once inside the engine) at the same thread count. (a) ``predict([t])`` per text; (b)
``InferenceEngine.run("sentiment", batch)`` where each batch is what a worker with a backlog
hands the engine: whole messages of ``chunk_size`` items, up to the policy's ``max_items`` and
token budget; (c) ``predict(chunk)`` over chunks of 64 in file order; (d) the forward passes
of one ``predict(texts)`` over all texts, which sorts all of them by length before cutting
passes of ``batch_size`` rows, once for each size in ``--bare-passes``: the least padding any
loop over this model can have. The fastest (d) is the ceiling, and the headline is the
engine's gain over (a) as a share of that ceiling's gain over (a).

The variants run interleaved: each is cut into one slice per worker batch, and each of
``--repeats`` rounds runs every variant's first slice, then every variant's second, and so on;
every variant keeps its best round. A shared machine that is slow for a few seconds then slows
every variant alike.

    python -m bench.batching_gain --n 10000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from itertools import pairwise
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
from core.inference.engine import InferenceEngine, Output, plan_passes
from core.inference.registry import adapter_class, get_task
from core.jobs.outbox import estimate_tokens

# The engine's gain over one at a time, as a share of the bare model's best batched gain.
TARGET_SHARE = 0.90
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


Slices = list[Callable[[], None]]


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous runs of near-equal length (none empty)."""
    parts = max(1, min(parts, len(items)))
    bounds = [len(items) * part // parts for part in range(parts + 1)]
    return [list(items[start:end]) for start, end in pairwise(bounds)]


def interleaved(variants: dict[str, Slices], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of every variant in every round. Each variant's work is cut into as many
    slices as the others'; a round runs every variant's first slice, then every variant's
    second, and so on, in an order that rotates, so that a machine that is slow for a few
    seconds slows every variant alike."""
    labels = list(variants)
    seconds = {label: [0.0] * rounds for label in labels}
    for number in range(rounds):
        for index in range(max(len(slices) for slices in variants.values())):
            shift = index % len(labels)
            for label in labels[shift:] + labels[:shift]:
                if index < len(variants[label]):
                    started = time.perf_counter()
                    variants[label][index]()
                    seconds[label][number] += time.perf_counter() - started
        log(
            f"round {number + 1}/{rounds}: "
            + ", ".join(f"{label} {seconds[label][number]:.2f}s" for label in labels)
        )
    return seconds


def padding(passes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Forward passes (each a list of token lengths): how many, and padded / real tokens."""
    real = sum(sum(lengths) for lengths in passes)
    padded = sum(len(lengths) * max(lengths) for lengths in passes)
    return {
        "forward_passes": len(passes),
        "mean_rows": round(sum(map(len, passes)) / len(passes), 1),
        "padded_per_real_token": round(padded / real, 3),
    }


def engine_passes(
    batches: list[list[str]], lengths: dict[str, int], policy: BatchPolicy
) -> list[list[int]]:
    """The passes the engine plans for these batches, as token lengths."""
    passes: list[list[int]] = []
    for batch in batches:
        batch_lengths = [lengths[text] for text in batch]
        passes += [[batch_lengths[i] for i in p] for p in plan_passes(batch_lengths, policy)]
    return passes


def sorted_passes(lengths: Sequence[int], rows: int) -> list[list[int]]:
    ordered = sorted(lengths)
    return [ordered[start : start + rows] for start in range(0, len(ordered), rows)]


def set_threads(threads: int | None) -> int:
    """One thread count for torch and the ONNX sessions (which read INFERQ_TORCH_THREADS)."""
    import torch

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    os.environ["INFERQ_TORCH_THREADS"] = str(threads)
    get_settings.cache_clear()
    return threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="distinct texts (default 10000)")
    parser.add_argument("--bare-batch", type=int, default=64, help="chunk size of (c)")
    parser.add_argument(
        "--bare-passes", default="32,64", help="pass sizes of (d), comma-separated (default 32,64)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds, best kept")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch/ONNX threads (default: torch's own)"
    )
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()
    args.bare_passes = [int(size) for size in str(args.bare_passes).split(",")]
    threads = set_threads(args.threads)

    from core.inference.transformer import load_tokenizer, tokenise

    settings = get_settings()
    policy = settings.batch_policy(TASK)
    texts = load_texts(args.n)
    machine = machine_facts()

    log("loading the bare model and the engine")
    model = adapter_class(get_task(TASK).chain[0]).load(device="cpu")
    engine = InferenceEngine("cpu", circuits=None, policies=settings.batching)
    model.predict(texts[: args.bare_batch])  # warm up: first calls allocate and tune kernels
    engine.run(TASK, texts[: args.bare_batch])
    batches = worker_batches(texts, settings.chunk_size, policy)
    # Word pieces as the engine counts them (the one tokenisation path of every runtime).
    lengths = dict(zip(texts, map(len, tokenise(load_tokenizer(), texts)), strict=True))

    seconds = interleaved(variants(args, model, engine, texts, batches, lengths), args.repeats)
    results = summarise(args, texts, seconds, batches, lengths, policy)
    primary = engine.primary(TASK)
    results["threads"] = threads
    results["precision"] = getattr(primary, "precision", None)
    results["runtime"] = getattr(primary, "runtime", None)
    report(args, machine, results)


def variants(
    args: argparse.Namespace,
    model: Any,
    engine: InferenceEngine,
    texts: list[str],
    batches: list[list[str]],
    lengths: dict[str, int],
) -> dict[str, Slices]:
    """(a) to (d), each cut into one slice per worker batch. The slices of (d) are runs of
    whole passes of the texts all sorted by length: ``predict`` keeps an already sorted run in
    order, so they run exactly the passes one ``predict(texts)`` runs."""
    parts = len(batches)

    def one_at_a_time(part: list[str]) -> None:
        for text in part:
            model.predict([text])

    def through_engine(batch: list[str]) -> None:
        outcomes = engine.run(TASK, batch)
        primary = [o for o in outcomes if isinstance(o, Output) and o.tier == "primary"]
        if len(primary) != len(batch):
            raise RuntimeError(f"engine: {len(primary)} primary results for {len(batch)} texts")

    def bare_batched(chunks: list[list[str]]) -> None:
        for chunk in chunks:
            model.predict(chunk)

    def bare_sorted(passes: list[list[str]], rows: int) -> None:
        default, model.batch_size = model.batch_size, rows
        try:
            model.predict([text for one_pass in passes for text in one_pass])
        finally:
            model.batch_size = default

    by_length = sorted(texts, key=lengths.__getitem__)  # stable, as predict sorts
    return {
        "one at a time": [partial(one_at_a_time, part) for part in split(texts, parts)],
        "engine": [partial(through_engine, batch) for batch in batches],
        f"bare x{args.bare_batch}": [
            partial(bare_batched, chunks)
            for chunks in split(chunked(texts, args.bare_batch), parts)
        ],
        **{
            f"bare all sorted x{rows}": [
                partial(bare_sorted, passes, rows)
                for passes in split(chunked(by_length, rows), parts)
            ]
            for rows in args.bare_passes
        },
    }


def summarise(
    args: argparse.Namespace,
    texts: list[str],
    seconds: dict[str, list[float]],
    batches: list[list[str]],
    lengths: dict[str, int],
    policy: BatchPolicy,
) -> dict[str, Any]:
    n = len(texts)
    pass_sizes: list[int] = args.bare_passes
    best = {label: min(times) for label, times in seconds.items()}
    single_rate, engine_rate = rate(n, best["one at a time"]), rate(n, best["engine"])
    bare_rate = rate(n, best[f"bare x{args.bare_batch}"])
    sorted_runs = {
        rows: {
            "batch": rows,
            "seconds": round(best[f"bare all sorted x{rows}"], 3),
            "texts_per_s": round(rate(n, best[f"bare all sorted x{rows}"]), 2),
            **padding(sorted_passes(list(lengths.values()), rows)),
        }
        for rows in pass_sizes
    }
    ceiling_rows = min(pass_sizes, key=lambda rows: best[f"bare all sorted x{rows}"])
    ceiling, ceiling_rate = (
        sorted_runs[ceiling_rows],
        rate(n, best[f"bare all sorted x{ceiling_rows}"]),
    )
    # Per round, the engine against that round's fastest bare sorted loop.
    shares = [
        min(seconds[f"bare all sorted x{rows}"][i] for rows in pass_sizes) / engine_s
        for i, engine_s in enumerate(seconds["engine"])
    ]
    engine_gain, ceiling_gain = engine_rate / single_rate, ceiling_rate / single_rate
    share = engine_gain / ceiling_gain
    sizes = [len(b) for b in batches]
    return {
        "n": n,
        "one_at_a_time": {
            "seconds": round(best["one at a time"], 3),
            "texts_per_s": round(single_rate, 2),
        },
        "engine": {
            "seconds": round(best["engine"], 3),
            "texts_per_s": round(engine_rate, 2),
            "micro_batches": len(batches),
            "mean_batch_items": round(n / len(batches), 2),
            "max_batch_items": max(sizes),
            **padding(engine_passes(batches, lengths, policy)),
            "policy": policy.model_dump(),
            "chunk_size": get_settings().chunk_size,
        },
        "bare_batched": {
            "batch": args.bare_batch,
            "seconds": round(best[f"bare x{args.bare_batch}"], 3),
            "texts_per_s": round(bare_rate, 2),
        },
        "bare_all_sorted": list(sorted_runs.values()),
        "bare_best": ceiling,
        "ratio_engine_vs_one_at_a_time": round(engine_gain, 2),
        "ratio_bare_batched_vs_one_at_a_time": round(bare_rate / single_rate, 2),
        "ratio_bare_best_vs_one_at_a_time": round(ceiling_gain, 2),
        "ratio_engine_vs_bare_batched": round(engine_rate / bare_rate, 3),
        "ratio_engine_gain_vs_bare_best_gain": round(share, 3),
        "share_by_round": [round(s, 3) for s in shares],
        "share_median_round": round(statistics.median(shares), 3),
        "meets_target": share >= TARGET_SHARE,
        "seconds_by_round": {
            label: [round(s, 3) for s in times] for label, times in seconds.items()
        },
    }


def report(args: argparse.Namespace, machine: dict[str, Any], results: dict[str, Any]) -> None:
    ceiling = results["bare_best"]
    emit(
        "batching_gain",
        params=base_params(args),
        machine=machine,
        results=results,
        targets={"ratio_engine_gain_vs_bare_best_gain": f">= {TARGET_SHARE}"},
        table=[
            ("texts", results["n"]),
            ("precision / runtime", f"{results['precision']} / {results['runtime']}"),
            ("threads", results["threads"]),
            ("one at a time  texts/s", results["one_at_a_time"]["texts_per_s"]),
            ("engine         texts/s", results["engine"]["texts_per_s"]),
            (f"bare x{args.bare_batch}       texts/s", results["bare_batched"]["texts_per_s"]),
            *[
                (f"bare sorted x{run['batch']} texts/s", run["texts_per_s"])
                for run in results["bare_all_sorted"]
            ],
            ("engine padded/real tokens", results["engine"]["padded_per_real_token"]),
            ("engine forward passes", results["engine"]["forward_passes"]),
            (f"bare best (x{ceiling['batch']}) padded/real", ceiling["padded_per_real_token"]),
            ("engine gain (vs one at a time)", results["ratio_engine_vs_one_at_a_time"]),
            ("bare best gain", results["ratio_bare_best_vs_one_at_a_time"]),
            ("engine gain / bare best gain", results["ratio_engine_gain_vs_bare_best_gain"]),
            ("  by round", results["share_by_round"]),
            (f"target >= {TARGET_SHARE}", results["meets_target"]),
        ],
    )


if __name__ == "__main__":
    main()
