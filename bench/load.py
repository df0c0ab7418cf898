"""The one load client every end-to-end comparison uses: inferq and its peers (Ray Serve) are
driven by the same code, so a difference in the figures is a difference in the servers.

A *target* turns a list of texts into one answer per text over HTTP. Two ways to drive it:

* ``closed_loop``: ``clients`` concurrent clients, each sending its next request as soon as the
  previous one is answered (what "32 concurrent clients" means); gives capacity.
* ``open_loop``: requests sent on a fixed schedule whatever the answers are doing; gives the
  latency at a chosen offered load (a slow answer does not delay the next send).

Latency runs from the (scheduled) send to the answer in hand, HTTP both ways included.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from bench.common import MAX_LONG_POLL_SECONDS, TERMINAL, BenchError, percentile

HTTP_TIMEOUT_SECONDS = MAX_LONG_POLL_SECONDS + 30


class Target(Protocol):
    """One system under load: answers ``texts`` with one result dict per text, in order."""

    name: str

    async def infer(self, http: httpx.AsyncClient, texts: list[str]) -> list[dict[str, Any]]: ...


@dataclass
class Sample:
    texts: int
    scheduled: float
    sent: float = math.nan
    done: float = math.nan
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.done - self.scheduled


@dataclass(frozen=True)
class LoadSummary:
    requests: int
    texts: int
    failed: int
    seconds: float  # first send -> last answer
    texts_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    error_kinds: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarise(samples: Sequence[Sample]) -> LoadSummary:
    good = [s for s in samples if s.error is None]
    latencies = [s.latency for s in good]
    start = min(s.scheduled for s in samples)
    end = max((s.done for s in good), default=math.nan)
    texts = sum(s.texts for s in good)
    seconds = end - start
    return LoadSummary(
        requests=len(samples),
        texts=texts,
        failed=len(samples) - len(good),
        seconds=round(seconds, 3),
        texts_per_s=round(texts / seconds, 2) if seconds > 0 else math.nan,
        p50_ms=round(percentile(latencies, 50) * 1000, 1),
        p90_ms=round(percentile(latencies, 90) * 1000, 1),
        p99_ms=round(percentile(latencies, 99) * 1000, 1),
        max_ms=round(max(latencies, default=math.nan) * 1000, 1),
        error_kinds=sorted({s.error for s in samples if s.error})[:5],
    )


def http_client(base_url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers or {},
        timeout=httpx.Timeout(HTTP_TIMEOUT_SECONDS),
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000),
    )


async def _one(target: Target, http: httpx.AsyncClient, texts: list[str], sample: Sample) -> None:
    sample.sent = time.perf_counter()
    try:
        results = await target.infer(http, texts)
        sample.done = time.perf_counter()
        if len(results) != len(texts):
            sample.error = f"{len(results)} results for {len(texts)} texts"
    except (BenchError, httpx.HTTPError) as exc:
        sample.error = f"{type(exc).__name__}: {str(exc)[:200]}"


async def closed_loop(
    target: Target,
    http: httpx.AsyncClient,
    requests: Sequence[list[str]],
    *,
    clients: int,
    timeout: float,
) -> list[Sample]:
    """Every request once, ``clients`` at a time, each client sending its next as soon as its
    previous is answered."""
    samples = [Sample(len(texts), math.nan) for texts in requests]
    indices = iter(range(len(requests)))

    async def client() -> None:
        for index in indices:
            samples[index].scheduled = time.perf_counter()
            await _one(target, http, list(requests[index]), samples[index])

    try:
        await asyncio.wait_for(
            asyncio.gather(*(client() for _ in range(max(1, clients)))), timeout=timeout
        )
    except TimeoutError as exc:
        raise BenchError(f"closed loop on {target.name} did not end within {timeout:.0f}s") from exc
    return samples


async def open_loop(
    target: Target,
    http: httpx.AsyncClient,
    requests: Sequence[list[str]],
    *,
    per_second: float,
    timeout: float,
) -> list[Sample]:
    """requests[i] sent at start + i / per_second, whatever the answers are doing."""
    start = time.perf_counter() + 0.5
    samples = [Sample(len(texts), start + i / per_second) for i, texts in enumerate(requests)]

    async def one(index: int) -> None:
        sample = samples[index]
        await asyncio.sleep(max(0.0, sample.scheduled - time.perf_counter()))
        await _one(target, http, list(requests[index]), sample)

    budget = len(requests) / per_second + timeout
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(requests)))), budget)
    except TimeoutError as exc:
        raise BenchError(f"open loop on {target.name} did not end within {budget:.0f}s") from exc
    return samples


class InferqTarget:
    """``POST /v1/jobs``, then the result. With ``prefer_wait`` the submit itself waits for the
    result (``Prefer: wait=N``: one request per job); without it, the submit answers 202 and the
    client long-polls ``GET /v1/jobs/{id}?wait=`` (two requests per job). Either way a job not
    finished in time is followed by long-polls until it is."""

    name = "inferq"

    def __init__(self, *, task: str = "sentiment", prefer_wait: float | None = 30.0) -> None:
        self.task = task
        self.prefer_wait = prefer_wait

    async def infer(self, http: httpx.AsyncClient, texts: list[str]) -> list[dict[str, Any]]:
        headers = {"Prefer": f"wait={self.prefer_wait:g}"} if self.prefer_wait else {}
        body = {"task": self.task, "inputs": texts, "priority": "interactive"}
        response = await http.post("/v1/jobs", json=body, headers=headers)
        if response.status_code not in (200, 201, 202):
            raise BenchError(
                f"POST /v1/jobs answered {response.status_code}: {response.text[:300]}"
            )
        job: dict[str, Any] = response.json()
        deadline = time.monotonic() + HTTP_TIMEOUT_SECONDS * 4
        while job["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise BenchError(f"job {job['id']} not finished in time")
            response = await http.get(
                f"/v1/jobs/{job['id']}", params={"wait": f"{MAX_LONG_POLL_SECONDS:g}"}
            )
            if response.status_code != 200:
                raise BenchError(f"GET job answered {response.status_code}: {response.text[:300]}")
            job = response.json()
        if job["status"] != "succeeded":
            raise BenchError(f"job {job['id']} ended {job['status']}")
        results: list[dict[str, Any]] = job["results"]
        if any(result.get("cached") for result in results):
            raise BenchError("a result was served from the cache: texts must be fresh")
        return results


async def run_scenarios(
    target: Target,
    http: httpx.AsyncClient,
    *,
    single: Sequence[str],
    half_load: Sequence[str],
    bulk: Sequence[str] = (),
    clients: int = 32,
    bulk_request_size: int = 100,
    half_load_seconds: float = 20.0,
    timeout: float = 1800,
    on_capacity: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The comparison's three loads, on texts the caller keeps disjoint:

    1. ``single``: one request per text, ``clients`` concurrent clients (closed loop): capacity;
    2. ``half_load``: one request per text sent open loop at half of that capacity for
       ``half_load_seconds`` (the first texts of this pool): latency;
    3. ``bulk``: requests of ``bulk_request_size`` texts, ``clients`` concurrent clients.

    ``on_capacity``, if given, is called right before and right after the first load, and its
    two answers are kept (``single.probe``): e.g. CPU readings of the server's processes.
    """
    before = on_capacity() if on_capacity else {}
    samples = await closed_loop(
        target, http, [[t] for t in single], clients=clients, timeout=timeout
    )
    after = on_capacity() if on_capacity else {}
    capacity = summarise(samples)
    if capacity.failed:
        raise BenchError(
            f"{target.name}: {capacity.failed} single requests failed: {capacity.error_kinds}"
        )
    half = capacity.texts_per_s / 2
    count = max(1, round(half * half_load_seconds))
    if count > len(half_load):
        raise BenchError(f"half load needs {count} fresh texts, {len(half_load)} given")
    paced = [[t] for t in half_load[:count]]
    latency = summarise(await open_loop(target, http, paced, per_second=half, timeout=timeout))
    result: dict[str, Any] = {
        "single": {**capacity.as_dict(), **({"probe": [before, after]} if on_capacity else {})},
        "half_load": {"offered_per_s": round(half, 2), **latency.as_dict()},
    }
    if bulk:
        requests = [
            list(bulk[i : i + bulk_request_size]) for i in range(0, len(bulk), bulk_request_size)
        ]
        result["bulk"] = summarise(
            await closed_loop(target, http, requests, clients=clients, timeout=timeout)
        ).as_dict()
    return result


def medians(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each figure's median across the rounds, figure by figure."""

    def median(scenario: str, key: str) -> float | None:
        found = (r[scenario][key] for r in rounds if scenario in r)
        values = [v for v in found if isinstance(v, int | float) and math.isfinite(v)]
        return round(statistics.median(values), 2) if values else None

    return {
        "single_texts_per_s": median("single", "texts_per_s"),
        "half_load_offered_per_s": median("half_load", "offered_per_s"),
        "half_load_p50_ms": median("half_load", "p50_ms"),
        "half_load_p99_ms": median("half_load", "p99_ms"),
        "bulk_texts_per_s": median("bulk", "texts_per_s"),
        "mean_items_per_batch": median("batches", "mean_items_per_batch"),
    }
