"""Many small jobs end to end: single-input interactive jobs from concurrent clients through a
distributed stack (API + worker + beat + PostgreSQL + Redis on this machine), against the bare
model run one text at a time in a plain loop, same precision, same host, same round.

Per round (``--rounds``, default 3), on a fresh stack:

1. ``--single`` single-input jobs from ``--clients`` concurrent clients, each sending its next
   job when its previous one is answered (``bench/load.py``'s closed loop): capacity;
2. single-input jobs sent open loop at half of that capacity for ``--half-load-seconds``:
   latency p50 / p99 from the send to the result in hand;
3. with ``--bulk N`` (first round only): N texts as jobs of 100 from the same clients;

then the stack is stopped and the bare model (the primary tier the worker serves, loaded here)
runs ``--bare-n`` of the round's texts one at a time. ratio = (1) texts/s / bare texts/s; the
headline is the median round's ratio, and the latency is the median of the rounds' p50 and p99.

A client does what a user does: ``POST /v1/jobs`` with ``Prefer: wait=30`` (one request per
job), or with ``--no-prefer-wait`` a 202 then long-polls of ``GET /v1/jobs/{id}?wait=``.
Every text is distinct across passes and rounds, so nothing is answered from the cache.

Text layout (``bench.common.load_texts`` offsets), so a peer can be driven with the same texts:
the bulk texts are [0, bulk); round r (from 0) takes ``--single`` texts from
bulk + r * (single + half_pool) and its half-load texts right after them.

    python -m bench.small_jobs --single 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench.common import (
    BenchError,
    add_stack_arguments,
    base_params,
    cpu_per_item_ms,
    cpu_seconds,
    emit,
    install_signal_handlers,
    load_texts,
    log,
    machine_facts,
    quiet_logging,
    run_rounds,
    running_stack,
    server_side_seconds,
    stack_options,
    worker_batch_stats,
)
from bench.load import InferqTarget, http_client, run_scenarios

TARGETS = {"single_vs_bare_one_at_a_time": 2.5, "half_load_p99_over_p50": 3.0}
HALF_POOL = 4000  # fresh texts kept for each round's half-load pass


@dataclass
class Layout:
    bulk: int
    single: int

    def single_texts(self, round_index: int) -> list[str]:
        return load_texts(self.single, offset=self._start(round_index))

    def half_texts(self, round_index: int) -> list[str]:
        return load_texts(HALF_POOL, offset=self._start(round_index) + self.single)

    def bulk_texts(self) -> list[str]:
        return load_texts(self.bulk) if self.bulk else []

    def _start(self, round_index: int) -> int:
        return self.bulk + round_index * (self.single + HALF_POOL)


@dataclass
class Round:
    scenarios: dict[str, Any]
    server_seconds: float | None
    worker: dict[str, Any]
    bare_one_at_a_time_per_s: float

    @property
    def ratio(self) -> float:
        return float(self.scenarios["single"]["texts_per_s"]) / self.bare_one_at_a_time_per_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "ratio_single_vs_bare": round(self.ratio, 3),
            "bare_one_at_a_time_per_s": round(self.bare_one_at_a_time_per_s, 2),
            **self.scenarios,
            "server_seconds": self.server_seconds,
            "worker": self.worker,
        }


def primary_model() -> Any:
    """The adapter the worker serves as the sentiment primary, loaded as the worker loads it."""
    from core.inference.registry import adapter_class, get_task

    return adapter_class(get_task("sentiment").chain[0]).load(device="cpu")


def bare_one_at_a_time(texts: list[str]) -> float:
    """Texts per second of ``predict([text])`` in a plain loop, after a short warm-up."""
    model = primary_model()
    for text in texts[:20]:
        model.predict([text])
    started = time.perf_counter()
    for text in texts:
        model.predict([text])
    return len(texts) / (time.perf_counter() - started)


def measure_round(args: argparse.Namespace, layout: Layout, index: int) -> Round:
    target = InferqTarget(prefer_wait=None if args.no_prefer_wait else 30.0)
    single = layout.single_texts(index)
    with running_stack(**stack_options(args)) as stack:

        async def go() -> dict[str, Any]:
            async with http_client(
                stack.api_url, {"Authorization": f"Bearer {stack.api_key}"}
            ) as http:
                return await run_scenarios(
                    target,
                    http,
                    single=single,
                    half_load=layout.half_texts(index),
                    bulk=layout.bulk_texts() if index == 0 else (),
                    clients=args.clients,
                    half_load_seconds=args.half_load_seconds,
                    on_capacity=lambda: cpu_seconds(stack),
                )

        scenarios = asyncio.run(go())
        before, after = scenarios["single"].pop("probe")
        scenarios["single"]["cpu_ms_per_job"] = cpu_per_item_ms(before, after, len(single))
        server = server_side_seconds(stack)
        worker = worker_batch_stats(stack)
    log(f"bare model, one at a time, {args.bare_n} texts")
    bare = bare_one_at_a_time(single[: args.bare_n])
    return Round(scenarios, server, worker, bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=2000, help="single-input jobs per round")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--half-load-seconds", type=float, default=15.0)
    parser.add_argument("--bulk", type=int, default=0, help="texts as jobs of 100 (round 1)")
    parser.add_argument("--bare-n", type=int, default=1000, help="texts for the bare loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-prefer-wait", action="store_true", help="202, then long-poll")
    add_stack_arguments(parser)
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()
    layout = Layout(args.bulk, args.single)
    machine = machine_facts()
    done = 0

    def measure() -> Round:
        nonlocal done
        done += 1
        return measure_round(args, layout, done - 1)

    rounds, median = run_rounds(args.rounds, measure, lambda r: r.ratio, "x")
    p50 = statistics.median(r.scenarios["half_load"]["p50_ms"] for r in rounds)
    p99 = statistics.median(r.scenarios["half_load"]["p99_ms"] for r in rounds)
    single = median.scenarios["single"]
    results = {
        "ratio_single_vs_bare": round(median.ratio, 3),
        "single_texts_per_s": single["texts_per_s"],
        "bare_one_at_a_time_per_s": round(median.bare_one_at_a_time_per_s, 2),
        "half_load_p50_ms_median": p50,
        "half_load_p99_ms_median": p99,
        "half_load_p99_over_p50": round(p99 / p50, 2) if p50 else None,
        "bulk": rounds[0].scenarios.get("bulk"),
        "ratios": [round(r.ratio, 3) for r in rounds],
        "rounds": [r.as_dict() for r in rounds],
    }
    emit(
        "small_jobs",
        params=base_params(args),
        machine=machine,
        results=results,
        targets=TARGETS,
        table=[
            ("single-input jobs/s (median round)", single["texts_per_s"]),
            ("bare model one at a time texts/s", median.bare_one_at_a_time_per_s),
            ("ratio (target >= 2.5)", median.ratio),
            ("ratios, every round", ", ".join(f"{r.ratio:.2f}" for r in rounds)),
            ("closed-loop p50 / p99 ms", f"{single['p50_ms']} / {single['p99_ms']}"),
            ("CPU ms per job, by part", single["cpu_ms_per_job"]),
            ("half load p50 / p99 ms (median of rounds)", f"{p50} / {p99}"),
            ("bulk 100 x 100 texts/s", (results["bulk"] or {}).get("texts_per_s")),
        ],
    )
    failed = sum(r.scenarios["half_load"]["failed"] for r in rounds)
    if failed:
        raise BenchError(f"{failed} half-load requests failed")


if __name__ == "__main__":
    main()
