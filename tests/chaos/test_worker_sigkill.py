"""SIGKILL the worker (main process and pool child) while hundreds of inputs are queued or
running; a fresh worker and the sweeper must finish every input with exactly one result row."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import func, select, text

from core.db.models import JobItem, Result
from core.db.session import Database
from tests.services import wait_for

pytestmark = pytest.mark.chaos

INPUTS = 320


def _sst2_sentences(n: int) -> list[str]:
    with open("data/sst2/dev.tsv", encoding="utf-8") as handle:
        rows = [line.split("\t")[0].strip() for line in handle.readlines()[1:]]
    return [sentence for sentence in rows if len(sentence.split()) > 6][:n]


def _status_counts(database: Database) -> dict[str, int]:
    with database.transaction() as session:
        rows = session.execute(
            select(JobItem.status, func.count()).group_by(JobItem.status)
        ).tuples()
        return {status: count for status, count in rows}


def test_sigkilled_worker_loses_and_duplicates_nothing(stack_factory: object, pg_url: str) -> None:
    stack = stack_factory(  # type: ignore[operator]
        INFERQ_LEASE_SECONDS="5",
        INFERQ_SWEEP_INTERVAL_SECONDS="1",
        INFERQ_REDISPATCH_AFTER_SECONDS="8",
        INFERQ_CHUNK_SIZE="16",
    )
    key = stack.run("keys", "create", "chaos")
    api = stack.start_api()
    stack.start("beat", "beat")
    stack.start_worker("worker-1")
    database = Database(pg_url)
    texts = _sst2_sentences(INPUTS)
    assert len(texts) == INPUTS

    with httpx.Client(
        base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        for start in (0, 160):
            created = client.post(
                "/v1/jobs",
                json={
                    "task": "sentiment",
                    "priority": "bulk",
                    "inputs": texts[start : start + 160],
                },
            )
            assert created.status_code == 202, created.text

    wait_for(
        lambda: (
            _status_counts(database).get("running", 0) > 0
            and _status_counts(database).get("succeeded", 0) >= 16
        ),
        120,
        "the first worker to be mid-batch",
        stack,
        "worker-1",
    )
    stack.kill("worker-1")
    before = _status_counts(database)
    assert before.get("succeeded", 0) < INPUTS, "the kill came too late to test anything"

    stack.start_worker("worker-2")
    started = time.monotonic()
    wait_for(
        lambda: _status_counts(database).get("succeeded", 0) == INPUTS,
        180,
        "every input to succeed after the restart",
        stack,
        "worker-2",
    )
    recovery_seconds = time.monotonic() - started

    with database.transaction() as session:
        results = session.scalar(select(func.count()).select_from(Result))
        distinct_items = session.scalar(select(func.count(func.distinct(Result.item_id))))
        retried = session.scalar(select(func.count()).where(JobItem.attempts > 1))
        jobs = session.execute(text("SELECT status FROM jobs")).scalars().all()
    print(f"before kill: {before}; recovered in {recovery_seconds:.1f}s; retried {retried}")
    assert results == distinct_items == INPUTS
    assert retried and retried > 0  # the kill hit leased work, which was re-driven
    assert set(jobs) == {"succeeded"}
    database.dispose()
