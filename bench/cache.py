"""The result cache end to end: the same N texts submitted twice to one distributed stack.

Pass 1 runs every input through the worker; pass 2 resubmits the very same texts (new jobs, no
Idempotency-Key), which the API should answer from the cache (Redis L1, PostgreSQL L3) without
the worker. Each pass runs from its first POST to its last job seen terminal.
speedup = pass1 / pass2; every pass-2 result must say ``cached: true``.

As in pipeline_efficiency, the machine is shared, so the two passes are measured in ``--rounds``
rounds, each on a fresh stack (new database, empty cache); the headline is the median round's
speedup, and every round's figures are recorded.

    python -m bench.cache --n 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import Any

from bench.common import (
    BenchError,
    JobClient,
    JobRecord,
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
    stack_options,
    summarise,
    worker_batch_stats,
)

TARGET_SPEEDUP = 20.0


@dataclass
class Round:
    """Both passes on one fresh stack."""

    first: PassSummary
    second: PassSummary
    worker_first_pass: dict[str, Any]
    worker_items_second_pass: int  # anything above zero means the cache missed
    same_labels: bool

    @property
    def speedup(self) -> float:
        return self.first.seconds / self.second.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "first_pass_seconds": round(self.first.seconds, 3),
            "second_pass_seconds": round(self.second.seconds, 3),
            "speedup": round(self.speedup, 2),
            "second_pass_cached": self.second.cached,
            "worker_items_second_pass": self.worker_items_second_pass,
        }


def measure_round(args: argparse.Namespace, texts: list[str]) -> Round:
    batches = chunked(texts, args.job_size)
    with running_stack(**stack_options(args)) as stack:

        async def one_pass() -> list[JobRecord]:
            async with JobClient(stack.api_url, stack.api_key) as client:
                return await run_jobs(
                    client,
                    batches,
                    priority=args.priority,
                    submitters=args.submitters,
                    timeout=args.timeout,
                )

        log(f"pass 1: {len(texts)} new texts")
        first_records = asyncio.run(one_pass())
        first = summarise(first_records)
        worker_after_first = worker_batch_stats(stack)
        log(f"pass 1: {first.seconds:.2f}s; pass 2: the same texts again")
        second_records = asyncio.run(one_pass())
        second = summarise(second_records)
        worker_after_second = worker_batch_stats(stack)
        log(f"pass 2: {second.seconds:.2f}s")
    return Round(
        first,
        second,
        worker_after_first,
        worker_after_second["items"] - worker_after_first["items"],
        labels_in_order(first_records) == labels_in_order(second_records),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_pass_arguments(parser, rounds_help="rounds on fresh stacks; the median counts")
    add_stack_arguments(parser)
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()

    texts = load_texts(args.n)
    machine = machine_facts()
    rounds, middle = run_rounds(
        args.rounds, lambda: measure_round(args, texts), lambda r: r.speedup, "x speedup"
    )

    n = len(texts)
    first, second = middle.first, middle.second
    speedups = [r.speedup for r in rounds]
    all_cached = all(r.second.complete and r.second.cached == n == r.second.results for r in rounds)
    first_ok = all(
        r.first.complete and r.first.results == n and r.first.cached == 0 for r in rounds
    )
    same_labels = all(r.same_labels for r in rounds)
    results: dict[str, Any] = {
        "n": n,
        "first_pass": {
            "seconds": round(first.seconds, 3),
            "texts_per_s": round(rate(n, first.seconds), 2),
            **{k: v for k, v in first.as_dict().items() if k != "seconds"},
        },
        "second_pass": {
            "seconds": round(second.seconds, 3),
            "texts_per_s": round(rate(n, second.seconds), 2),
            "worker_items_run": middle.worker_items_second_pass,
            **{k: v for k, v in second.as_dict().items() if k != "seconds"},
        },
        "worker_first_pass": middle.worker_first_pass,
        "speedup": round(middle.speedup, 2),
        "speedup_min_max": [round(min(speedups), 2), round(max(speedups), 2)],
        "rounds": [r.as_dict() for r in rounds],
        "second_pass_all_cached": all_cached,
        "same_labels_both_passes": same_labels,
        "first_pass_complete_and_uncached": first_ok,
        "meets_target": all_cached and first_ok and middle.speedup >= TARGET_SPEEDUP,
    }
    emit(
        "cache",
        params=base_params(args),
        machine=machine,
        results=results,
        targets={
            "speedup": f">= {TARGET_SPEEDUP} (median of rounds)",
            "second_pass_all_cached": True,
        },
        table=[
            ("texts", n),
            ("rounds (speedup each)", ", ".join(f"{s:.1f}x" for s in speedups)),
            ("median round:", ""),
            ("  pass 1 seconds", first.seconds),
            ("  pass 1 texts/s", rate(n, first.seconds)),
            ("  pass 2 seconds", second.seconds),
            ("  pass 2 texts/s", rate(n, second.seconds)),
            ("  speedup", middle.speedup),
            ("  pass 2 cached results", f"{second.cached} / {n}"),
            ("  pass 2 items run by the worker", middle.worker_items_second_pass),
            ("same labels both passes, every round", same_labels),
            (f"target speedup >= {TARGET_SPEEDUP}", results["meets_target"]),
        ],
    )
    if not (all_cached and first_ok):
        raise BenchError("a pass did not finish every input as expected (see the JSON)")


if __name__ == "__main__":
    main()
