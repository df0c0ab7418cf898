"""Scenario 3: PostgreSQL, the system of record, is restarted (fast shutdown: open transactions
rolled back, every connection closed) and stays down a few seconds while jobs run and clients
keep calling. While it is down the API answers 503 problem+json with Retry-After, never a 500;
afterwards the API, the worker and beat reconnect by themselves, every job finishes, and no
input has two results.

CI: 2 restarts during 1,000 inputs. ``make chaos``: 5 restarts during 5,000 inputs, each restart
while a fresh wave of inputs is queued and running."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.chaos.infra import (
    Ledger,
    job_statuses,
    query,
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

INPUTS = scaled(ci=1_000, full=5_000)
RESTARTS = scaled(ci=2, full=5)
DOWN_SECONDS = 4.0


@dataclass
class Caller:
    """A client that keeps reading a job and submitting small ones, recording every answer."""

    api: str
    key: str
    job_id: str
    seen: list[tuple[str, int, str, str]] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.api, headers=headers, timeout=30) as client:
            while not self.stop.is_set():
                self._call(client, "GET", f"/v1/jobs/{self.job_id}", None)
                text = f"a short review written during the outage {uuid.uuid4()}"
                self._call(client, "POST", "/v1/jobs", {"task": "sentiment", "inputs": [text]})
                self.stop.wait(0.1)

    def _call(self, client: httpx.Client, method: str, path: str, body: object) -> None:
        response = client.request(method, path, json=body)
        kind = response.headers.get("content-type", "")
        retry_after = response.headers.get("retry-after", "")
        self.seen.append((method, response.status_code, kind, retry_after))
        self.answered_at.append(time.monotonic())
        if method == "POST" and response.status_code == 202:
            self.submitted.append(response.json()["id"])


def _seconds_to_first_2xx(caller: Caller, moment: float, timeout: float = 60) -> float:
    """Seconds from ``moment`` to the first 200/202 the caller got after it."""
    while True:
        answers = zip(list(caller.answered_at), list(caller.seen), strict=False)
        first = next((at for at, seen in answers if at > moment and seen[1] in (200, 202)), None)
        if first is not None:
            return round(first - moment, 2)
        assert time.monotonic() - moment < timeout, "the API did not recover"
        time.sleep(0.05)


@pytest.mark.timeout(scaled(ci=600, full=1800))
def test_a_postgres_restart_is_503_while_down_and_every_job_finishes(
    chaos_stack: Any, services: Any
) -> None:
    figures = record_figures("postgres_restart", inputs=INPUTS, restarts_planned=RESTARTS)
    stack: Stack
    stack, _ = chaos_stack(
        INFERQ_SWEEP_INTERVAL_SECONDS="1",
        INFERQ_RELAY_INTERVAL_SECONDS="1",
        INFERQ_REDISPATCH_AFTER_SECONDS="8",
        INFERQ_LEASE_SECONDS="15",
        INFERQ_CHUNK_SIZE="16",
        INFERQ_MAX_ATTEMPTS="20",
    )
    dsn = services.postgres.dsn
    key = stack.run("keys", "create", "chaos")
    api = stack.start_api()
    stack.start("beat", "beat")
    stack.start_worker()
    texts = sst2_texts(INPUTS, seed=3)
    jobs: list[str] = []
    outage_answers: Counter[str] = Counter()
    recovered_after: list[float] = []

    for restart in range(RESTARTS):
        jobs += submit(api, key, texts[restart::RESTARTS])  # a wave of work for each outage
        caller = Caller(api, key, jobs[0])
        thread = threading.Thread(target=caller.run, daemon=True)
        thread.start()
        time.sleep(1.0)  # answers from before the outage
        figures.setdefault("unfinished_at_stops", []).append(unfinished_items(dsn))
        services.postgres.stop("fast")
        before = len(caller.seen)
        time.sleep(DOWN_SECONDS)
        during = caller.seen[before:]
        services.postgres.start()
        back = time.monotonic()
        recovered_after.append(_seconds_to_first_2xx(caller, back))
        caller.stop.set()
        thread.join(timeout=60)
        jobs += caller.submitted
        outage_answers.update(f"{method} {code}" for method, code, _, _ in during)
        all_codes = Counter(code for _, code, _, _ in caller.seen)
        figures.update(
            restarts=restart + 1,
            answers_while_down=dict(outage_answers),
            seconds_to_first_2xx_after_start=recovered_after,
        )
        figures["http_500s"] = figures.get("http_500s", 0) + all_codes[500]
        figures["http_503s"] = figures.get("http_503s", 0) + all_codes[503]
        assert all_codes[500] == 0, f"the API answered 500 around an outage: {all_codes}"
        assert {code for _, code, _, _ in caller.seen} <= {200, 202, 503}, all_codes
        unavailable = [answer for answer in during if answer[1] == 503]
        assert unavailable, f"no 503 while PostgreSQL was down: {during}"
        assert all(kind.startswith("application/problem+json") for _, _, kind, _ in unavailable)
        assert all(retry_after.isdigit() for _, _, _, retry_after in unavailable)

    figures["recovery_seconds"] = round(wait_until_done(dsn, scaled(ci=400, full=1200), stack), 1)
    ledger = Ledger.read(dsn)
    figures.update(
        items=len(ledger.items),
        lost=len(ledger.lost),
        duplicated=len(ledger.duplicated),
        retried=retried_items(dsn),
        redispatched=redispatched(stack),
        item_statuses=ledger.statuses,
        processes_alive={name: p.poll() is None for name, p in stack.processes.items()},
    )
    assert all(figures["processes_alive"].values()), "a process exited instead of reconnecting"
    assert all(figures["unfinished_at_stops"]), "an outage came when no work was left"
    assert ledger.with_result == ledger.items, f"{len(ledger.lost)} inputs have no result"
    assert not ledger.duplicated, f"{len(ledger.duplicated)} inputs have two result rows"
    # Every job in the database finished, those the API accepted (202) among them.
    assert set(job_statuses(dsn)) == {"succeeded"}
    assert set(jobs) <= {str(row[0]) for row in query(dsn, "SELECT id FROM jobs")}
