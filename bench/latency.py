"""Submit-to-result latency of single-input interactive jobs at half of capacity (open loop).

First the capacity (items/s) of single-input interactive jobs is measured with a burst of
``--n`` of them (or taken from ``--capacity``). Then single-input jobs are sent on a fixed
schedule at ``--load`` x capacity for ``--seconds``, whatever the answers are doing (open loop:
a slow answer does not delay the next send), each followed by long-polling until its result.
Latency runs from the scheduled send time to the result in hand. Every text is distinct, so
nothing is served from the cache.

    python -m bench.latency --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from bench.common import (
    TERMINAL,
    BenchError,
    JobClient,
    Stack,
    add_stack_arguments,
    base_params,
    emit,
    install_signal_handlers,
    load_texts,
    log,
    machine_facts,
    percentile,
    quiet_logging,
    rate,
    run_jobs,
    running_stack,
    stack_options,
    summarise,
    worker_batch_stats,
)

TARGETS = {"offered_load": "0.5 x measured capacity"}


@dataclass
class Sample:
    scheduled: float
    sent: float
    done: float = math.nan
    job_id: str = ""
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.done - self.scheduled


async def measure_capacity(client: JobClient, texts: list[str], submitters: int) -> float:
    """Items/s of single-input interactive jobs sent as fast as ``submitters`` POSTs allow."""
    records = await run_jobs(
        client, [[t] for t in texts], priority="interactive", submitters=submitters, timeout=600
    )
    summary = summarise(records)
    if not summary.complete:
        raise BenchError(f"capacity burst did not complete: {summary.statuses}")
    log(f"capacity burst: {len(texts)} jobs in {summary.seconds:.2f}s")
    return rate(len(texts), summary.seconds)


async def open_loop(
    client: JobClient, texts: list[str], per_second: float, max_latency: float
) -> list[Sample]:
    """Send texts[i] at start + i / per_second, each as its own job, and follow it to its end."""
    start = time.perf_counter() + 0.5

    async def one(index: int, text: str) -> Sample:
        scheduled = start + index / per_second
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        sample = Sample(scheduled=scheduled, sent=time.perf_counter())
        try:
            job = await client.submit([text], "interactive")
            sample.job_id = job["id"]
            if job["status"] not in TERMINAL:
                job = await client.wait(job["id"], time.monotonic() + max_latency)
            sample.done = time.perf_counter()
            results = job.get("results", [])
            if job["status"] != "succeeded" or len(results) != 1:
                sample.error = f"status {job['status']}, {len(results)} results"
            elif results[0].get("cached"):
                sample.error = "served from the cache (texts must be distinct)"
        except (BenchError, httpx.HTTPError) as exc:
            sample.error = repr(exc)
        return sample

    tasks = [asyncio.create_task(one(i, text)) for i, text in enumerate(texts)]
    budget = len(texts) / per_second + max_latency + 60
    try:
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=budget)
    except TimeoutError as exc:
        raise BenchError(f"open-loop phase did not end within {budget:.0f}s") from exc
    finally:
        for task in tasks:
            task.cancel()


def server_latencies(stack: Stack, job_ids: list[str]) -> list[float]:
    """finished_at - created_at of each job by the database's clock: the queue and the worker,
    without HTTP and long-poll granularity."""
    if not job_ids:
        return []
    ids = ",".join(f"'{uuid.UUID(job_id)}'" for job_id in job_ids)
    rows = stack.sql(
        "SELECT EXTRACT(EPOCH FROM (finished_at - created_at)) FROM jobs "
        f"WHERE id IN ({ids}) AND finished_at IS NOT NULL"
    )
    return [float(row[0]) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="single-input jobs in capacity burst")
    parser.add_argument("--capacity", type=float, help="items/s; skips the capacity burst")
    parser.add_argument("--seconds", type=float, default=30, help="length of the open-loop phase")
    parser.add_argument("--load", type=float, default=0.5, help="fraction of capacity to offer")
    parser.add_argument("--submitters", type=int, default=8, help="concurrent POSTs in burst")
    parser.add_argument("--max-latency", type=float, default=60, help="give up on a job after")
    add_stack_arguments(parser)
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()

    burst_texts = [] if args.capacity else load_texts(args.n)
    machine = machine_facts()
    with running_stack(**stack_options(args)) as stack:

        async def go() -> tuple[float, float, list[Sample], list[str], dict[str, Any]]:
            async with JobClient(stack.api_url, stack.api_key, connections=1000) as client:
                capacity = args.capacity or await measure_capacity(
                    client, burst_texts, args.submitters
                )
                before = worker_batch_stats(stack)  # what the burst left in the worker's log
                offered = capacity * args.load
                count = max(1, round(offered * args.seconds))
                texts = load_texts(count, offset=len(burst_texts))
                log(f"open loop: {count} jobs at {offered:.2f}/s for {args.seconds:.0f}s")
                samples = await open_loop(client, texts, offered, args.max_latency)
                return capacity, offered, samples, texts, before

        capacity, offered, samples, texts, before = asyncio.run(go())
        after = worker_batch_stats(stack)
        server = server_latencies(stack, [s.job_id for s in samples if s.error is None])

    good = [s for s in samples if s.error is None]
    latencies = [s.latency for s in good]
    lags = [s.sent - s.scheduled for s in samples]
    errors = sorted({s.error for s in samples if s.error})
    span = max((s.done for s in good), default=math.nan) - min(s.scheduled for s in samples)
    batches = after["batches"] - before["batches"]
    items = after["items"] - before["items"]
    quantiles = {
        f"p{q}_ms": round(percentile(latencies, q) * 1000, 1) if latencies else None
        for q in (50, 90, 99)
    }
    results: dict[str, Any] = {
        "capacity_items_per_s": round(capacity, 2),
        "capacity_measured": args.capacity is None,
        "offered_per_s": round(offered, 2),
        "count": len(samples),
        "succeeded": len(good),
        "errors": len(samples) - len(good),
        "error_kinds": errors[:5],
        **quantiles,
        "server_side_ms": {
            f"p{q}": round(percentile(server, q) * 1000, 1) if server else None
            for q in (50, 90, 99)
        },
        "mean_ms": round(sum(latencies) / len(latencies) * 1000, 1) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "min_ms": round(min(latencies) * 1000, 1) if latencies else None,
        "achieved_per_s": round(rate(len(good), span), 2),
        "max_send_lag_ms": round(max(lags) * 1000, 1),
        "worker_batches": batches,
        "worker_mean_items_per_batch": round(items / batches, 2) if batches else None,
        "distinct_texts": len(set(texts)) == len(texts),
    }
    emit(
        "latency",
        params=base_params(args),
        machine=machine,
        results=results,
        targets=TARGETS,
        table=[
            ("capacity items/s", capacity),
            ("offered items/s", offered),
            ("jobs sent / succeeded", f"{len(samples)} / {len(good)}"),
            ("p50 ms", results["p50_ms"]),
            ("p90 ms", results["p90_ms"]),
            ("p99 ms", results["p99_ms"]),
            ("server-side p50 / p99 ms", "{p50} / {p99}".format(**results["server_side_ms"])),
            ("max ms", results["max_ms"] or float("nan")),
            ("achieved items/s", results["achieved_per_s"]),
            ("max send lag ms", results["max_send_lag_ms"]),
            ("worker items/batch", results["worker_mean_items_per_batch"] or float("nan")),
        ],
    )
    if errors:
        raise BenchError(f"{len(samples) - len(good)} jobs failed: {errors[:3]}")


if __name__ == "__main__":
    main()
