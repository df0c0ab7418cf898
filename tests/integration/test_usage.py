"""Usage through a real deployment (PostgreSQL, Redis, `inferq serve|worker|beat` as separate
processes, the real sentiment model): a finished job's and a batch's `usage` over HTTP, and
`inferq usage` reading the same database."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

NDJSON = {"Content-Type": "application/x-ndjson"}


def estimated_tokens(text: str) -> int:
    return len(text) // 4 + 2  # core.jobs.outbox.estimate_tokens, as the usage docs say


def fresh_texts(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]  # never seen before: no input is answered from the cache
    return [
        f"review {tag}-{i}: a warm and funny film that i loved from start to finish"
        for i in range(n)
    ]


def finished_job(client: httpx.Client, inputs: list[str]) -> dict[str, Any]:
    created = client.post("/v1/jobs", json={"task": "sentiment", "inputs": inputs})
    assert created.status_code == 202, created.text
    deadline = time.monotonic() + 180  # the first job waits for the worker to load the model
    while True:
        job: dict[str, Any] = client.get(created.headers["location"], params={"wait": 30}).json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            break
    assert job["status"] == "succeeded", job
    return job


def database(deployment: Deployment) -> psycopg.Connection[Any]:
    return psycopg.connect(deployment.stack.env["INFERQ_DATABASE_URL"].replace("+psycopg", ""))


def test_a_finished_job_shows_what_it_used(deployment: Deployment) -> None:
    texts = fresh_texts(3)
    with deployment.client() as client:
        job = finished_job(client, texts)

    usage = job["usage"]
    assert usage["inputs"] == 3
    assert usage["cached_inputs"] == 0
    assert usage["tokens"] == sum(estimated_tokens(t) for t in texts)
    assert usage["model_seconds"] > 0
    assert usage["tiers"] == {"primary": 3, "fallback": 0, "rules": 0}


def test_the_same_inputs_again_are_cached_inputs_with_no_model_time(
    deployment: Deployment,
) -> None:
    texts = fresh_texts(2)
    with deployment.client() as client:
        finished_job(client, texts)
        again = finished_job(client, texts)

    # Answered from the cache at submit or in the worker: either way, cached and free.
    assert again["usage"]["inputs"] == again["usage"]["cached_inputs"] == 2
    assert again["usage"]["model_seconds"] == 0
    assert again["usage"]["tokens"] == 0


def test_a_batch_shows_the_sum_of_its_jobs_usage(deployment: Deployment) -> None:
    lines = [{"id": f"line-{i}", "text": text} for i, text in enumerate(fresh_texts(5))]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    with deployment.client() as client:
        created = client.post(
            "/v1/batches", params={"task": "sentiment"}, headers=NDJSON, content=body
        )
        assert created.status_code == 202, created.text
        batch = wait_until_over(client, created.json()["id"])

    assert batch["status"] == "completed", batch
    with database(deployment) as conn:
        row = conn.execute(
            "SELECT sum(usage_inputs), sum(usage_tokens), sum(usage_model_seconds)"
            " FROM jobs WHERE batch_id = %s",
            (batch["id"],),
        ).fetchone()
    assert row is not None
    usage = batch["usage"]
    assert usage["inputs"] == row[0] == 5
    assert usage["tokens"] == row[1] == sum(estimated_tokens(line["text"]) for line in lines)
    assert usage["model_seconds"] == pytest.approx(row[2])
    assert usage["model_seconds"] > 0
    assert usage["tiers"]["primary"] == 5


def wait_until_over(client: httpx.Client, batch_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch: dict[str, Any] = client.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} did not end: {batch}")


def test_inferq_usage_prints_the_tenants_inputs_hit_rate_and_cost(deployment: Deployment) -> None:
    with deployment.client() as client:
        finished_job(client, fresh_texts(1))  # alice has used something, whatever ran before
    with database(deployment) as conn:
        row = conn.execute(
            "SELECT sum(j.usage_inputs), sum(j.usage_cached), sum(j.usage_model_seconds)"
            " FROM jobs j JOIN tenants t ON t.id = j.tenant_id"
            " WHERE t.name = 'alice' AND j.task = 'sentiment'"
        ).fetchone()
    assert row is not None
    inputs, cached, seconds = int(row[0]), int(row[1]), float(row[2])

    printed = deployment.stack.run("usage", "--tenant", "alice", "--since", "1d")
    (line,) = [li for li in printed.splitlines() if "sentiment" in li]
    cells = [cell.strip() for cell in line.strip("│┃| ").split("│")]
    tenant, task, _jobs, shown_inputs, hit_rate, _tokens, shown_seconds, cost, per_1000 = cells
    assert (tenant, task, shown_inputs) == ("alice", "sentiment", f"{inputs:,}")
    assert hit_rate == f"{cached / inputs:.1%}"
    assert float(shown_seconds.replace(",", "")) == pytest.approx(seconds, abs=1e-3)
    expected_cost = seconds * 0.10 / 3600  # INFERQ_COST_PER_WORKER_HOUR's default, a CPU worker
    assert float(cost) == pytest.approx(expected_cost, abs=1e-6)
    assert float(per_1000) == pytest.approx(1000 * expected_cost / inputs, abs=1e-6)
    assert "bob" not in printed
