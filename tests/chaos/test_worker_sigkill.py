"""Scenario 1: the worker is SIGKILLed (its whole process group: main process and pool child)
again and again at random moments while thousands of inputs are queued or running, and a fresh
worker is started after each kill. The sweeper re-drives what each dead worker held; every input
must end with exactly one result row: none lost, none duplicated.

CI: 5 kills during 2,000 inputs. ``make chaos``: 30 kills during 10,000 inputs."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.chaos.infra import (
    Ledger,
    job_statuses,
    redispatched,
    retried_items,
    sst2_texts,
    submit,
    unfinished_items,
    wait_until_done,
)
from tests.chaos.scale import record_figures, scaled
from tests.services import Stack

pytestmark = pytest.mark.chaos

INPUTS = scaled(ci=2_000, full=10_000)
KILLS = scaled(ci=5, full=30)
# Each kill lands this long after the new worker said it was ready: sometimes before its first
# batch, mostly in the middle of one.
KILL_AFTER_SECONDS = (0.0, 3.0)


@pytest.mark.timeout(scaled(ci=900, full=3600))
def test_repeated_worker_sigkills_lose_and_duplicate_no_input(
    chaos_stack: Any, services: Any
) -> None:
    figures = record_figures("worker_sigkill", inputs=INPUTS, kills_planned=KILLS)
    stack: Stack
    stack, _ = chaos_stack(
        INFERQ_LEASE_SECONDS="15",
        INFERQ_SWEEP_INTERVAL_SECONDS="1",
        INFERQ_REDISPATCH_AFTER_SECONDS="8",
        INFERQ_CHUNK_SIZE="16",
        # A kill costs every item it interrupts one attempt; the cap (poison isolation) is
        # tested elsewhere and must not turn this many kills into failures.
        INFERQ_MAX_ATTEMPTS="100",
    )
    dsn = services.postgres.dsn
    key = stack.run("keys", "create", "chaos")
    api = stack.start_api()
    stack.start("beat", "beat")
    jobs = submit(api, key, sst2_texts(INPUTS))
    rng = random.Random(20261202)

    kills = 0
    while kills < KILLS:
        name = f"worker-{kills + 1}"
        stack.start_worker(name)
        time.sleep(rng.uniform(*KILL_AFTER_SECONDS))
        left = unfinished_items(dsn)
        assert left, f"the run finished after {kills} of {KILLS} kills: too few inputs"
        stack.kill(name)
        kills += 1
        figures.update(kills=kills, unfinished_at_last_kill=left)

    stack.start_worker(f"worker-{kills + 1}")
    figures["recovery_seconds"] = round(wait_until_done(dsn, scaled(ci=600, full=1800), stack), 1)

    ledger = Ledger.read(dsn)
    figures.update(
        items=len(ledger.items),
        lost=len(ledger.lost),
        duplicated=len(ledger.duplicated),
        retried=retried_items(dsn),
        redispatched=redispatched(stack),
        item_statuses=ledger.statuses,
    )
    assert len(ledger.items) == INPUTS
    assert ledger.with_result == ledger.items, f"{len(ledger.lost)} inputs have no result"
    assert not ledger.duplicated, f"{len(ledger.duplicated)} inputs have two result rows"
    assert job_statuses(dsn) == {"succeeded": len(jobs)}
    assert figures["retried"] > 0, "no kill hit leased work: the scenario tested nothing"
