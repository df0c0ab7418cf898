"""End-to-end efficiency in distributed mode: N texts through HTTP -> PostgreSQL outbox -> Redis
-> one worker (prefork, concurrency 1, torch on every core) -> PostgreSQL, compared with a bare
batched model loop over the same texts in this process once the stack is stopped.

efficiency = bare_seconds / pipeline_seconds, where pipeline_seconds runs from the first POST to
the last job seen terminal (long-poll) and bare_seconds is the strict bare loop: one predict over
all texts, sorted by length, in passes of 64 (also reported: chunks of 64 in file order). Every
job must succeed with one result per input.

    python -m bench.pipeline_efficiency --n 10000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.common import (
    BenchError,
    JobClient,
    PassSummary,
    add_stack_arguments,
    base_params,
    chunked,
    emit,
    install_signal_handlers,
    labels_in_order,
    load_texts,
    log,
    machine_facts,
    quiet_logging,
    rate,
    run_jobs,
    running_stack,
    server_side_seconds,
    stack_options,
    summarise,
    worker_batch_stats,
)

TARGET_EFFICIENCY = 0.85


def bare_model_loop(
    texts: list[str], batch: int, repeats: int
) -> tuple[dict[str, list[float]], list[str | None]]:
    """Two bare loops over the texts after a warm-up chunk, each ``repeats`` times, with wall
    times: "chunks", SentimentTransformer.predict over chunks of ``batch`` in file order, and
    "sorted", one predict over all texts, which sorts every text by length before cutting passes
    of ``batch`` (the least padding any loop can have: the strict baseline)."""
    from core.inference.transformer import SentimentTransformer

    model = SentimentTransformer.load(device="cpu")
    model.batch_size = batch
    model.predict(texts[:batch])
    times: dict[str, list[float]] = {"chunks": [], "sorted": []}
    labels: list[str | None] = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        labels = [p.label for chunk in chunked(texts, batch) for p in model.predict(chunk)]
        times["chunks"].append(time.perf_counter() - started)
        started = time.perf_counter()
        model.predict(texts)
        times["sorted"].append(time.perf_counter() - started)
        log(f"bare loops: chunks {times['chunks'][-1]:.2f}s, sorted {times['sorted'][-1]:.2f}s")
    return times, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="distinct texts (default 10000)")
    parser.add_argument("--job-size", type=int, default=256, help="inputs per job")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent POSTs")
    parser.add_argument("--priority", default="bulk", choices=("bulk", "interactive"))
    parser.add_argument("--bare-batch", type=int, default=64)
    parser.add_argument(
        "--bare-repeats", type=int, default=1, help="run the bare loop this often; the best counts"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for the whole pass")
    add_stack_arguments(parser)
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()

    texts = load_texts(args.n)
    machine = machine_facts()
    with running_stack(**stack_options(args)) as stack:
        log(f"submitting {len(texts)} texts in jobs of {args.job_size}")

        async def go() -> list[Any]:
            async with JobClient(stack.api_url, stack.api_key) as client:
                return await run_jobs(
                    client,
                    chunked(texts, args.job_size),
                    priority=args.priority,
                    submitters=args.submitters,
                    timeout=args.timeout,
                )

        records = asyncio.run(go())
        summary: PassSummary = summarise(records)
        log(f"pipeline: {summary.seconds:.2f}s, statuses {summary.statuses}")
        server_seconds = server_side_seconds(stack)
        batches = worker_batch_stats(stack)
        pipeline_labels = labels_in_order(records)
        stack.stop_all()  # nothing may compete with the bare loop

    log("bare batched model loops")
    bare_times, bare_labels = bare_model_loop(texts, args.bare_batch, args.bare_repeats)
    chunks_seconds, sorted_seconds = min(bare_times["chunks"]), min(bare_times["sorted"])
    n = len(texts)
    agree = sum(1 for a, b in zip(pipeline_labels, bare_labels, strict=True) if a == b)
    efficiency = sorted_seconds / summary.seconds
    ok = summary.complete and summary.results == n and summary.cached == 0
    results: dict[str, Any] = {
        "n": n,
        "pipeline": {
            "seconds": round(summary.seconds, 3),
            "texts_per_s": round(rate(n, summary.seconds), 2),
            "server_side_seconds": round(server_seconds, 3) if server_seconds else None,
            **{k: v for k, v in summary.as_dict().items() if k != "seconds"},
        },
        "worker": batches,
        "bare_batched": {
            "batch": args.bare_batch,
            "seconds": round(chunks_seconds, 3),
            "texts_per_s": round(rate(n, chunks_seconds), 2),
            "all_runs_seconds": [round(t, 3) for t in bare_times["chunks"]],
        },
        "bare_all_sorted": {
            "batch": args.bare_batch,
            "seconds": round(sorted_seconds, 3),
            "texts_per_s": round(rate(n, sorted_seconds), 2),
            "all_runs_seconds": [round(t, 3) for t in bare_times["sorted"]],
        },
        "efficiency": round(efficiency, 4),
        "efficiency_vs_bare_chunks": round(chunks_seconds / summary.seconds, 4),
        "labels_agree_with_bare": round(agree / n, 4),
        "all_jobs_succeeded_and_results_equal_n": ok,
        "meets_target": ok and efficiency >= TARGET_EFFICIENCY,
    }
    emit(
        "pipeline_efficiency",
        params=base_params(args),
        machine=machine,
        results=results,
        targets={"efficiency": f">= {TARGET_EFFICIENCY}"},
        table=[
            ("texts", n),
            ("jobs", summary.jobs),
            ("pipeline seconds", summary.seconds),
            ("  of which submitting", summary.submit_seconds),
            ("pipeline texts/s", rate(n, summary.seconds)),
            ("bare x64 chunks seconds", chunks_seconds),
            ("bare x64 sorted seconds", sorted_seconds),
            ("bare x64 sorted texts/s", rate(n, sorted_seconds)),
            ("efficiency vs bare sorted", efficiency),
            ("efficiency vs bare chunks", results["efficiency_vs_bare_chunks"]),
            ("worker batches", batches["batches"]),
            ("worker items/batch", batches["mean_items_per_batch"] or float("nan")),
            ("worker model seconds", batches["model_seconds_total"] or float("nan")),
            ("worker batch seconds", batches["batch_seconds_total"]),
            ("results / succeeded", f"{summary.results} / {summary.statuses}"),
            ("labels agree with bare", results["labels_agree_with_bare"]),
            (f"target efficiency >= {TARGET_EFFICIENCY}", results["meets_target"]),
        ],
    )
    if not ok:
        raise BenchError("not every job succeeded with one result per input (see the JSON)")


if __name__ == "__main__":
    main()
