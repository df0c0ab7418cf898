"""End-to-end efficiency in distributed mode: N texts through HTTP -> PostgreSQL outbox -> Redis
-> one worker (prefork, the product's default of one pool process per core) -> PostgreSQL,
compared with a bare batched model loop over the same texts in this process once the stack is
stopped.

efficiency = bare_seconds / pipeline_seconds, where pipeline_seconds runs from the first POST to
the last job seen terminal (long-poll) and bare_seconds is the strict bare loop: one predict over
all texts, sorted by length, in passes of 64 (also reported: chunks of 64 in file order). Every
job must succeed with one result per input.

The machine this runs on is shared, and back-to-back runs of the same code differ by up to a
quarter. So the measurement is made in ``--rounds`` paired rounds: each starts a fresh stack (new
database, empty cache), runs the pipeline, stops the stack, then runs the bare loops; each round
gives its own ratio, and the headline is the median round's. Every round's figures are recorded.

    python -m bench.pipeline_efficiency --n 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.common import (
    BenchError,
    JobClient,
    PassSummary,
    add_pass_arguments,
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
    run_rounds,
    running_stack,
    server_side_seconds,
    stack_options,
    summarise,
    worker_batch_stats,
)

TARGET_EFFICIENCY = 0.85


@dataclass
class Round:
    """One paired measurement: the pipeline on a fresh stack, then the bare loops."""

    pipeline: PassSummary
    server_seconds: float | None
    worker: dict[str, Any]
    labels: list[str | None]
    bare_chunks_seconds: float
    bare_sorted_seconds: float
    bare_labels: list[str | None]

    @property
    def efficiency(self) -> float:
        return self.bare_sorted_seconds / self.pipeline.seconds

    @property
    def efficiency_vs_chunks(self) -> float:
        return self.bare_chunks_seconds / self.pipeline.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "pipeline_seconds": round(self.pipeline.seconds, 3),
            "bare_sorted_seconds": round(self.bare_sorted_seconds, 3),
            "bare_chunks_seconds": round(self.bare_chunks_seconds, 3),
            "efficiency": round(self.efficiency, 4),
            "efficiency_vs_bare_chunks": round(self.efficiency_vs_chunks, 4),
        }


def bare_model_loops(texts: list[str], batch: int) -> tuple[float, float, list[str | None]]:
    """Two bare loops over the texts after a warm-up chunk, with wall times: "chunks",
    SentimentTransformer.predict over chunks of ``batch`` in file order, and "sorted", one predict
    over all texts, which sorts every text by length before cutting passes of ``batch`` (the
    least padding any loop can have: the strict baseline)."""
    from core.inference.transformer import SentimentTransformer

    model = SentimentTransformer.load(device="cpu")
    model.batch_size = batch
    model.predict(texts[:batch])
    started = time.perf_counter()
    labels = [p.label for chunk in chunked(texts, batch) for p in model.predict(chunk)]
    chunks_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model.predict(texts)
    sorted_seconds = time.perf_counter() - started
    log(f"bare loops: chunks {chunks_seconds:.2f}s, sorted {sorted_seconds:.2f}s")
    return chunks_seconds, sorted_seconds, labels


def measure_round(args: argparse.Namespace, texts: list[str]) -> Round:
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
        summary = summarise(records)
        log(f"pipeline: {summary.seconds:.2f}s, statuses {summary.statuses}")
        server_seconds = server_side_seconds(stack)
        worker = worker_batch_stats(stack)
        stack.stop_all()  # nothing may compete with the bare loop
    chunks_seconds, sorted_seconds, bare_labels = bare_model_loops(texts, args.bare_batch)
    return Round(
        summary,
        server_seconds,
        worker,
        labels_in_order(records),
        chunks_seconds,
        sorted_seconds,
        bare_labels,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pass_arguments(parser, rounds_help="paired rounds; the median counts")
    parser.add_argument("--bare-batch", type=int, default=64)
    add_stack_arguments(parser)
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()

    texts = load_texts(args.n)
    machine = machine_facts()
    rounds, middle = run_rounds(
        args.rounds, lambda: measure_round(args, texts), lambda r: r.efficiency, " efficiency"
    )
    summary = middle.pipeline
    n = len(texts)
    efficiencies = [r.efficiency for r in rounds]
    agree = sum(1 for a, b in zip(middle.labels, middle.bare_labels, strict=True) if a == b)
    ok = all(
        r.pipeline.complete and r.pipeline.results == n and r.pipeline.cached == 0 for r in rounds
    )
    efficiency = middle.efficiency
    results: dict[str, Any] = {
        "n": n,
        "pipeline": {
            "seconds": round(summary.seconds, 3),
            "texts_per_s": round(rate(n, summary.seconds), 2),
            "server_side_seconds": (
                round(middle.server_seconds, 3) if middle.server_seconds else None
            ),
            **{k: v for k, v in summary.as_dict().items() if k != "seconds"},
        },
        "worker": middle.worker,
        "bare_batched": {
            "batch": args.bare_batch,
            "seconds": round(middle.bare_chunks_seconds, 3),
            "texts_per_s": round(rate(n, middle.bare_chunks_seconds), 2),
        },
        "bare_all_sorted": {
            "batch": args.bare_batch,
            "seconds": round(middle.bare_sorted_seconds, 3),
            "texts_per_s": round(rate(n, middle.bare_sorted_seconds), 2),
        },
        "efficiency": round(efficiency, 4),
        "efficiency_vs_bare_chunks": round(middle.efficiency_vs_chunks, 4),
        "efficiency_min_max": [round(min(efficiencies), 4), round(max(efficiencies), 4)],
        "rounds": [r.as_dict() for r in rounds],
        "labels_agree_with_bare": round(agree / n, 4),
        "all_jobs_succeeded_and_results_equal_n": ok,
        "meets_target": ok and efficiency >= TARGET_EFFICIENCY,
    }
    emit(
        "pipeline_efficiency",
        params=base_params(args),
        machine=machine,
        results=results,
        targets={"efficiency": f">= {TARGET_EFFICIENCY} (median of rounds)"},
        table=[
            ("texts", n),
            ("rounds (efficiency each)", ", ".join(f"{e:.1%}" for e in efficiencies)),
            ("median round:", ""),
            ("  jobs", summary.jobs),
            ("  pipeline seconds", summary.seconds),
            ("    of which submitting", summary.submit_seconds),
            ("  pipeline texts/s", rate(n, summary.seconds)),
            ("  bare x64 chunks seconds", middle.bare_chunks_seconds),
            ("  bare x64 sorted seconds", middle.bare_sorted_seconds),
            ("  bare x64 sorted texts/s", rate(n, middle.bare_sorted_seconds)),
            ("  efficiency vs bare sorted", efficiency),
            ("  efficiency vs bare chunks", middle.efficiency_vs_chunks),
            ("  worker batches", middle.worker["batches"]),
            ("  worker items/batch", middle.worker["mean_items_per_batch"] or float("nan")),
            ("  worker model seconds", middle.worker["model_seconds_total"] or float("nan")),
            ("  worker batch seconds", middle.worker["batch_seconds_total"]),
            ("  results / succeeded", f"{summary.results} / {summary.statuses}"),
            ("  labels agree with bare", results["labels_agree_with_bare"]),
            (f"target efficiency >= {TARGET_EFFICIENCY}", results["meets_target"]),
        ],
    )
    if not ok:
        raise BenchError("not every job succeeded with one result per input (see the JSON)")


if __name__ == "__main__":
    main()
