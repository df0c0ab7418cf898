"""Many small jobs end to end: single-input interactive jobs from concurrent clients through a
distributed stack (API + worker + beat + PostgreSQL + Redis on this machine), against the bare
model run one text at a time in a plain loop, same precision, same host, same round.

Per round (``--rounds``, default 3), on a fresh stack:

1. ``--single`` single-input jobs from ``--clients`` concurrent clients, each sending its next
   job when its previous one is answered (``bench/load.py``'s closed loop): capacity;
2. single-input jobs sent open loop at half of that capacity for ``--half-load-seconds``:
   latency p50 / p99 from the send to the result in hand;
3. ``--bulk`` texts (10,000) as jobs of 100 from the same clients;

then the stack is stopped and the bare model (the primary tier the worker serves, loaded here)
runs ``--bare-n`` of the round's texts one at a time. ratio = (1) texts/s / bare texts/s; the
headline is the median round's ratio, and the latency is the median of the rounds' p50 and p99.

With ``--versus-ray`` the same rounds then run against Ray Serve wrapping the same model
(``bench/peers/ray_serve.py``, the ``bench`` extra), one system running at a time, and the
record has inferq / Ray for each figure (medians of the rounds).

A client does what a user does: ``POST /v1/jobs`` with ``Prefer: wait=30`` (one request per
job), or with ``--no-prefer-wait`` a 202 then long-polls of ``GET /v1/jobs/{id}?wait=``.
Within a round every text is distinct (single, half load and bulk take disjoint texts), and
each round runs on a fresh stack (new database, empty Redis), so nothing is answered from the
cache; every round, and Ray, get the same texts: single [0, single), half load the next
``HALF_POOL``, bulk the ``--bulk`` after those (``bench.common.load_texts`` offsets).

    python -m bench.small_jobs --single 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import asdict, dataclass
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
from bench.load import InferqTarget, http_client, medians, run_scenarios

TARGETS = {
    "single_vs_bare_one_at_a_time": 2.5,
    "half_load_p99_over_p50": 3.0,
    "inferq_over_ray_throughput": 1.0,
}
HALF_POOL = 8000  # fresh texts kept for the half-load pass: 20 s at up to 400 texts/s


@dataclass
class SameTexts:
    """Every round's texts, the same in each round (a dataclass with ``TextLayout``'s shape,
    so Ray's measurement takes it as it is)."""

    rounds: int
    single: int
    bulk: int
    half_load_pool: int = HALF_POOL
    offset: int = 0

    @property
    def end(self) -> int:
        return self.single + self.half_load_pool + self.bulk

    def offsets(self, _round_index: int = 0) -> dict[str, int]:
        return {"single": 0, "half_load": self.single, "bulk": self.single + self.half_load_pool}

    def texts(self, _round_index: int = 0) -> tuple[list[str], list[str], list[str]]:
        """(single, half_load, bulk)."""
        at = self.offsets()
        return (
            load_texts(self.single, offset=at["single"]),
            load_texts(self.half_load_pool, offset=at["half_load"]),
            load_texts(self.bulk, offset=at["bulk"]) if self.bulk else [],
        )


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


def measure_round(args: argparse.Namespace, layout: SameTexts) -> Round:
    target = InferqTarget(prefer_wait=None if args.no_prefer_wait else 30.0)
    single, half_load, bulk = layout.texts()
    with running_stack(**stack_options(args)) as stack:

        async def go() -> dict[str, Any]:
            async with http_client(
                stack.api_url, {"Authorization": f"Bearer {stack.api_key}"}
            ) as http:
                return await run_scenarios(
                    target,
                    http,
                    single=single,
                    half_load=half_load,
                    bulk=bulk,
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


# The figures inferq and Ray are compared on (bench.load.medians has a few more).
COMPARED = ("single_texts_per_s", "half_load_p50_ms", "half_load_p99_ms", "bulk_texts_per_s")


def compared_medians(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    every = medians(rounds)
    return {key: every[key] for key in COMPARED}


def versus_ray(args: argparse.Namespace, layout: SameTexts, ours: dict[str, Any]) -> dict[str, Any]:
    """The same rounds against Ray Serve (after inferq's stack is gone), and inferq / Ray."""
    from bench.peers.ray_serve import measure_ray

    ray = measure_ray(
        args.rounds,
        args.single,
        args.half_load_seconds,
        args.bulk,
        args.clients,
        0,
        layout=layout,
    )
    theirs = compared_medians(ray["rounds"])

    def over(key: str) -> float | None:
        if ours.get(key) is None or not theirs.get(key):
            return None
        return round(float(ours[key]) / float(theirs[key]), 3)

    return {
        "ray": ray,
        "medians": {"inferq": ours, "ray": theirs},
        "inferq_over_ray": {key: over(key) for key in theirs},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=2000, help="single-input jobs per round")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--half-load-seconds", type=float, default=15.0)
    parser.add_argument("--bulk", type=int, default=10_000, help="texts as jobs of 100 a round")
    parser.add_argument("--bare-n", type=int, default=1000, help="texts for the bare loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-prefer-wait", action="store_true", help="202, then long-poll")
    parser.add_argument("--versus-ray", action="store_true", help="then the same on Ray Serve")
    add_stack_arguments(parser)
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()
    layout = SameTexts(args.rounds, args.single, args.bulk)
    machine = machine_facts()
    rounds, median = run_rounds(
        args.rounds, lambda: measure_round(args, layout), lambda r: r.ratio, "x"
    )
    ours = compared_medians([r.scenarios for r in rounds])
    p50, p99 = ours["half_load_p50_ms"], ours["half_load_p99_ms"]
    single = median.scenarios["single"]
    results: dict[str, Any] = {
        "ratio_single_vs_bare": round(median.ratio, 3),
        "single_texts_per_s": single["texts_per_s"],
        "bare_one_at_a_time_per_s": round(median.bare_one_at_a_time_per_s, 2),
        "half_load_p50_ms_median": p50,
        "half_load_p99_ms_median": p99,
        "half_load_p99_over_p50": round(p99 / p50, 2) if p50 and p99 else None,
        "bulk_texts_per_s_median": ours["bulk_texts_per_s"],
        "cpu_ms_per_job": single["cpu_ms_per_job"],
        "ratios": [round(r.ratio, 3) for r in rounds],
        "layout": asdict(layout),
        "rounds": [r.as_dict() for r in rounds],
    }
    table: list[tuple[str, Any]] = [
        ("single-input jobs/s (median round)", single["texts_per_s"]),
        ("bare model one at a time texts/s", median.bare_one_at_a_time_per_s),
        ("ratio (target >= 2.5)", median.ratio),
        ("ratios, every round", ", ".join(f"{r.ratio:.2f}" for r in rounds)),
        ("closed-loop p50 / p99 ms", f"{single['p50_ms']} / {single['p99_ms']}"),
        ("CPU ms per job, by part", single["cpu_ms_per_job"]),
        ("half load p50 / p99 ms (median of rounds)", f"{p50} / {p99}"),
        ("bulk 100 x 100 texts/s (median)", ours["bulk_texts_per_s"]),
    ]
    if args.versus_ray:
        results["versus_ray"] = versus_ray(args, layout, ours)
        table += [
            (f"inferq / ray: {key}", value)
            for key, value in results["versus_ray"]["inferq_over_ray"].items()
        ]
    emit(
        "small_jobs",
        params=base_params(args),
        machine=machine,
        results=results,
        targets=TARGETS,
        table=table,
    )
    failed = sum(r.scenarios["half_load"]["failed"] for r in rounds)
    if failed:
        raise BenchError(f"{failed} half-load requests failed")


if __name__ == "__main__":
    main()
