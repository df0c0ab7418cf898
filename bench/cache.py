"""The result cache end to end: the same N texts submitted twice to one distributed stack.

Pass 1 runs every input through the worker; pass 2 resubmits the very same texts (new jobs, no
Idempotency-Key), which the API should answer from the cache (Redis L1, PostgreSQL L3) without
the worker. Each pass runs from its first POST to its last job seen terminal.
speedup = pass1 / pass2; every pass-2 result must say ``cached: true``.

    python -m bench.cache --n 10000
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench.common import (
    BenchError,
    JobClient,
    JobRecord,
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
    stack_options,
    summarise,
    worker_batch_stats,
)

TARGET_SPEEDUP = 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="distinct texts (default 10000)")
    parser.add_argument("--job-size", type=int, default=256, help="inputs per job")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent POSTs")
    parser.add_argument("--priority", default="bulk", choices=("bulk", "interactive"))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for each pass")
    add_stack_arguments(parser)
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()

    texts = load_texts(args.n)
    batches = chunked(texts, args.job_size)
    machine = machine_facts()
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

    n = len(texts)
    speedup = first.seconds / second.seconds
    same_labels = labels_in_order(first_records) == labels_in_order(second_records)
    all_cached = second.complete and second.cached == n == second.results
    first_ok = first.complete and first.results == n and first.cached == 0
    # Items the worker ran during pass 2: anything above zero means the cache missed.
    worker_items_second = worker_after_second["items"] - worker_after_first["items"]
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
            "worker_items_run": worker_items_second,
            **{k: v for k, v in second.as_dict().items() if k != "seconds"},
        },
        "worker_first_pass": worker_after_first,
        "speedup": round(speedup, 2),
        "second_pass_all_cached": all_cached,
        "same_labels_both_passes": same_labels,
        "first_pass_complete_and_uncached": first_ok,
        "meets_target": all_cached and first_ok and speedup >= TARGET_SPEEDUP,
    }
    emit(
        "cache",
        params=base_params(args),
        machine=machine,
        results=results,
        targets={"speedup": f">= {TARGET_SPEEDUP}", "second_pass_all_cached": True},
        table=[
            ("texts", n),
            ("pass 1 seconds", first.seconds),
            ("pass 1 texts/s", rate(n, first.seconds)),
            ("pass 2 seconds", second.seconds),
            ("pass 2 texts/s", rate(n, second.seconds)),
            ("speedup", speedup),
            ("pass 2 cached results", f"{second.cached} / {n}"),
            ("pass 2 items run by the worker", worker_items_second),
            ("same labels both passes", same_labels),
            (f"target speedup >= {TARGET_SPEEDUP}", results["meets_target"]),
        ],
    )
    if not (all_cached and first_ok):
        raise BenchError("a pass did not finish every input as expected (see the JSON)")


if __name__ == "__main__":
    main()
