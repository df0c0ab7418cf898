"""What the security layer costs a request: two `inferq serve` processes on one database and
Redis, the same in all but INFERQ_RATE_LIMITS — one counts every request in Redis (limits high
enough never to refuse), the other has no rate limits — both authenticating, checking scopes
and quotas as always. Concurrent clients send the same mix to one process, then the other,
round after round (interleaved, so drift on the shared machine hits both): single-input
``POST /v1/jobs`` (no worker runs: jobs stay queued, which also makes every submit read the
tenant's pending inputs for the quota) and ``GET /v1/jobs/{id}``.

ratio = requests/s with rate limits / requests/s without (median of the rounds).

    python -m bench.limits_overhead --requests 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    Stack,
    emit,
    free_port,
    fresh_postgres_database,
    fresh_redis_db,
    install_signal_handlers,
    log,
    machine_facts,
    quiet_logging,
    rate,
    stack_env,
)

LIMITED = "jobs:write=100000000/minute;default=100000000/minute"


async def one_pass(url: str, key: str, requests: int, clients: int) -> float:
    """Requests/s of ``requests`` (half submits, half reads) from ``clients`` closed loops."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:
        job_id = (await http.post("/v1/jobs", json={"task": "sentiment", "inputs": ["x"]})).json()[
            "id"
        ]
        remaining = iter(range(requests))

        async def client() -> None:
            for n in remaining:
                if n % 2:
                    answer = await http.get(f"/v1/jobs/{job_id}")
                else:
                    body = {"task": "sentiment", "inputs": [f"text {n}"]}
                    answer = await http.post("/v1/jobs", json=body)
                if answer.status_code not in (200, 202):
                    raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return rate(requests, time.perf_counter() - started)


def start_api(stack: Stack, name: str, rate_limits: str) -> str:
    port = free_port()
    stack.start(
        name, "serve", "--port", str(port), "--workers", "1",
        extra_env={"INFERQ_RATE_LIMITS": rate_limits},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    stack.wait_for(lambda: healthy(url), 90, "the API to answer /healthz", name)
    return url


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()
    work_dir = Path(tempfile.mkdtemp(prefix="inferq-bench-limits-"))
    with fresh_postgres_database() as database_url, fresh_redis_db() as redis_url:
        env = stack_env(database_url, redis_url, work_dir, free_port())
        stack = Stack(env, work_dir, database_url)
        try:
            stack.run("db", "upgrade")
            key = stack.run("keys", "create", "bench").splitlines()[-1].strip()
            urls = {"limited": start_api(stack, "api-limited", LIMITED)}
            urls["unlimited"] = start_api(stack, "api-unlimited", "")
            rounds: list[dict[str, float]] = []
            for number in range(args.rounds):
                order = ["limited", "unlimited"] if number % 2 == 0 else ["unlimited", "limited"]
                figures = {
                    name: asyncio.run(one_pass(urls[name], key, args.requests, args.clients))
                    for name in order
                }
                figures["ratio"] = figures["limited"] / figures["unlimited"]
                log(f"round {number + 1}: {figures}")
                rounds.append(figures)
        finally:
            stack.stop_all()
    ratios = [figures["ratio"] for figures in rounds]
    results: dict[str, Any] = {
        "ratio_median": statistics.median(ratios),
        "limited_requests_per_second_median": statistics.median(r["limited"] for r in rounds),
        "unlimited_requests_per_second_median": statistics.median(r["unlimited"] for r in rounds),
        "rounds": rounds,
    }
    emit(
        "limits_overhead",
        params=vars(args) | {"rate_limits": LIMITED},
        machine=machine_facts(),
        results=results,
        targets={"ratio": "close to 1: counting in Redis should cost little"},
        table=[
            ("with / without rate limits", results["ratio_median"]),
            ("with (req/s)", results["limited_requests_per_second_median"]),
            ("without (req/s)", results["unlimited_requests_per_second_median"]),
        ],
    )


if __name__ == "__main__":
    main()
