"""Scenario 2: Redis — the Celery broker and the L1 cache — is SIGKILLed and started again
empty, three times, while jobs are queued and running and more are being submitted. Whatever
messages it held are gone; PostgreSQL still has every job (invariant 1), so the outbox relay and
the sweeper send them again, and every job finishes with exactly one result per input.

A worker that stops finishing items after a reconnect is raised as ``WorkerStalled`` (it did:
the batcher kept counting a batch whose pool child the connection loss had terminated, see
``TokenBudgetBatches.Strategy``).

CI: 3 restarts during 2,000 inputs. ``make chaos``: 3 restarts during 8,000 inputs."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import pytest
import redis

from tests.chaos.infra import (
    Ledger,
    job_statuses,
    redispatched,
    retried_items,
    sst2_texts,
    submit,
    unfinished_items,
)
from tests.chaos.scale import record_figures, scaled
from tests.services import Stack

pytestmark = pytest.mark.chaos

INPUTS = scaled(ci=2_000, full=8_000)
RESTARTS = 3
DOWN_SECONDS = 2.0
STALL_SECONDS = 60  # no item finished for this long while some are left: the worker is stuck


class WorkerStalled(AssertionError):
    """The worker is alive and connected to Redis but finishes nothing."""


def _wait_until_done_or_stalled(dsn: str, redis_port: int, timeout: float) -> float:
    """Seconds until no item is queued or running; WorkerStalled if progress stops."""
    started = time.monotonic()
    last, changed = unfinished_items(dsn), started
    while last:
        time.sleep(0.5)
        left, now = unfinished_items(dsn), time.monotonic()
        if left != last:
            last, changed = left, now
        elif now - changed > STALL_SECONDS:
            broker = redis.Redis(port=redis_port)
            unacked = broker.hlen("unacked")
            broker.close()
            raise WorkerStalled(
                f"{left} items unfinished and none finished for {STALL_SECONDS}s; the worker "
                f"holds {unacked} unacked messages"
            )
        assert now - started < timeout, f"{left} items unfinished after {timeout}s"
    return time.monotonic() - started


@pytest.mark.timeout(scaled(ci=600, full=1800))
def test_redis_killed_and_restarted_empty_three_times_loses_no_job(
    chaos_stack: Any, services: Any
) -> None:
    figures = record_figures("redis_restarts", inputs=INPUTS, restarts_planned=RESTARTS)
    stack: Stack
    stack, _ = chaos_stack(
        INFERQ_SWEEP_INTERVAL_SECONDS="1",
        INFERQ_RELAY_INTERVAL_SECONDS="1",
        INFERQ_REDISPATCH_AFTER_SECONDS="5",
        INFERQ_LEASE_SECONDS="15",
        INFERQ_CHUNK_SIZE="16",
    )
    dsn = services.postgres.dsn
    key = stack.run("keys", "create", "chaos")
    api = stack.start_api()
    stack.start("beat", "beat")
    stack.start_worker()
    texts = sst2_texts(INPUTS, seed=2)
    waves = [texts[i :: RESTARTS + 1] for i in range(RESTARTS + 1)]
    codes_while_down: list[int] = []
    headers = {"Authorization": f"Bearer {key}"}

    rng = random.Random(20261202)
    jobs = submit(api, key, waves[0])
    for restart in range(RESTARTS):
        time.sleep(rng.uniform(0.2, 1.0))  # messages queued, prefetched and running
        unfinished = unfinished_items(dsn)
        assert unfinished, "the work finished before Redis was killed"
        services.redis.kill()
        # Submitting while the broker is down: the job is committed, its message waits.
        with httpx.Client(base_url=api, headers=headers, timeout=60) as client:
            body = {"task": "sentiment", "inputs": [f"submitted while redis is down {restart}"]}
            created = client.post("/v1/jobs", json=body)
        codes_while_down.append(created.status_code)
        if created.status_code == 202:
            jobs.append(created.json()["id"])
        time.sleep(DOWN_SECONDS)
        services.redis.start()
        figures.update(restarts=restart + 1, posts_while_down=codes_while_down)
        figures.setdefault("unfinished_at_kills", []).append(unfinished)
        jobs += submit(api, key, waves[restart + 1])

    try:
        recovery = _wait_until_done_or_stalled(dsn, services.redis.port, scaled(ci=400, full=1200))
    except WorkerStalled:
        figures.update(worker_stalled=True, item_statuses=Ledger.read(dsn).statuses)
        raise
    figures.update(recovery_seconds=round(recovery, 1), worker_stalled=False)
    ledger = Ledger.read(dsn)
    figures.update(
        items=len(ledger.items),
        lost=len(ledger.lost),
        duplicated=len(ledger.duplicated),
        redriven=retried_items(dsn),
        redispatched=redispatched(stack),
        item_statuses=ledger.statuses,
    )
    assert codes_while_down == [202] * RESTARTS, "a submit failed because Redis was down"
    assert len(ledger.items) == INPUTS + RESTARTS
    assert ledger.with_result == ledger.items, f"{len(ledger.lost)} inputs have no result"
    assert not ledger.duplicated, f"{len(ledger.duplicated)} inputs have two result rows"
    assert job_statuses(dsn) == {"succeeded": len(jobs)}
