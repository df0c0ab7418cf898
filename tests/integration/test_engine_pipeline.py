"""Batching, fallback, circuit breakers and the result cache through a real deployment:
PostgreSQL, Redis, and `inferq serve|worker|beat` processes. Fault injection uses fake models
(tests/fakes.py) configured as tasks through INFERQ_TASKS, exactly as an operator would."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Deployment, deployed

pytestmark = pytest.mark.integration


def _chain(*tiers: tuple[str, str]) -> dict[str, object]:
    return {"chain": [{"tier": tier, "adapter": adapter} for tier, adapter in tiers]}


TASKS = {
    "flaky": _chain(("primary", "tests.fakes:AlwaysFails"), ("fallback", "tests.fakes:Healthy")),
    "slow": _chain(("primary", "tests.fakes:Slow"), ("fallback", "tests.fakes:Healthy")),
    "poison": _chain(("primary", "tests.fakes:PoisonSensitive")),
    "forced": _chain(
        ("primary", "tests.fakes:Healthy"), ("rules", "core.inference.rules:VaderSentiment")
    ),
    "tokens": _chain(("primary", "tests.fakes:Healthy")),
}
BATCHING = {
    "default": {"max_items": 64, "max_wait_ms": 25, "token_budget": 8192},
    # One message of 4 inputs, run one row per pass: the deadline lands part-way through it.
    "slow": {"max_items": 1, "forward_max_items": 1, "max_wait_ms": 25, "deadline_seconds": 0.2},
    "tokens": {"max_items": 1000, "max_wait_ms": 200, "token_budget": 100},
}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    env = {
        "INFERQ_TASKS": json.dumps(TASKS),
        "INFERQ_BATCHING": json.dumps(BATCHING),
        "INFERQ_CIRCUIT_FORCE_OPEN": "forced:primary",
        "INFERQ_CIRCUIT_FAILURE_THRESHOLD": "3",
        "INFERQ_CIRCUIT_RECOVERY_SECONDS": "600",
        "INFERQ_MAX_ATTEMPTS": "2",
        "INFERQ_TEST_SLOW_SECONDS": "0.5",
    }
    with deployed(tmp_path_factory.mktemp("faulty"), 11, **env) as running:
        yield running


def run_job(
    client: httpx.Client, task: str, inputs: list[str], priority: str = "interactive"
) -> dict[str, object]:
    created = client.post("/v1/jobs", json={"task": task, "inputs": inputs, "priority": priority})
    assert created.status_code == 202, created.text
    return client.get(created.headers["location"], params={"wait": 30}).json()  # type: ignore[no-any-return]


def wait_job(client: httpx.Client, job_id: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()
    return job


def flush_reasons(deployment: Deployment) -> list[str]:
    return [
        json.loads(line)["reason"]
        for line in deployment.stack.log("worker").splitlines()
        if '"batch_flushed"' in line
    ]


def test_an_exception_falls_back_to_the_next_tier_and_says_so(faulty: Deployment) -> None:
    with faulty.client() as client:
        job = run_job(client, "flaky", ["good day", "bad day"])

    assert job["status"] == "succeeded"
    assert {(r["tier"], r["degraded"]) for r in job["results"]} == {("fallback", True)}  # type: ignore[union-attr]


def test_a_missed_deadline_hands_the_batch_to_the_next_tier(faulty: Deployment) -> None:
    with faulty.client() as client:
        job = run_job(client, "slow", [f"good {i}" for i in range(4)])

    tiers = [r["tier"] for r in job["results"]]  # type: ignore[union-attr]
    assert job["status"] == "succeeded"
    assert "fallback" in tiers  # the slow primary ran out of time for part of the batch


def test_a_forced_open_tier_is_skipped_and_shown_in_models(faulty: Deployment) -> None:
    with faulty.client() as client:
        job = run_job(client, "forced", ["what a good film"])
        models = {m["task"]: m for m in client.get("/v1/models").json()["data"]}

    assert [(r["tier"], r["degraded"]) for r in job["results"]] == [("rules", True)]  # type: ignore[union-attr]
    circuits = {t["tier"]: t["circuit"] for t in models["forced"]["chain"]}
    assert circuits == {"primary": "forced-open", "rules": "closed"}


def test_repeated_failures_open_the_circuit_for_every_process(faulty: Deployment) -> None:
    with faulty.client() as client:
        for i in range(3):
            run_job(client, "flaky", [f"trip {i} {uuid.uuid4()}"])
        models = {m["task"]: m for m in client.get("/v1/models").json()["data"]}

    # The worker tripped it; the API process reads the same state from Redis.
    assert {t["tier"]: t["circuit"] for t in models["flaky"]["chain"]}["primary"] == "open"


def test_a_poison_input_fails_after_its_attempt_cap_and_its_neighbours_succeed(
    faulty: Deployment,
) -> None:
    inputs = [f"good neighbour {i}" for i in range(9)]
    inputs[5] = "POISON pill"
    with faulty.client() as client:
        job = wait_job(client, str(run_job(client, "poison", inputs)["id"]), 60)

    assert job["status"] == "succeeded"
    assert [r["index"] for r in job["results"]] == [i for i in range(9) if i != 5]  # type: ignore[union-attr]
    [error] = job["errors"]  # type: ignore[misc]
    assert error["index"] == 5 and "after 2 attempts" in error["error"]
    assert "cannot process a poison input" in error["error"]


def test_batches_flush_on_items_tokens_or_time(faulty: Deployment) -> None:
    with faulty.client() as client:
        run_job(client, "forced", ["a lone input"])  # one message: only the timer flushes it
        run_job(client, "flaky", [f"good {i} {uuid.uuid4()}" for i in range(64)])  # 64 items
        run_job(client, "tokens", [f"{'word ' * 40}{i}" for i in range(8)])  # ~52 tokens each

    reasons = set(flush_reasons(faulty))
    assert {"max_wait", "max_items", "token_budget"} <= reasons


def test_the_same_text_is_served_from_the_cache_across_jobs(deployment: Deployment) -> None:
    text = f"a gorgeous , generous film {uuid.uuid4()}"
    with deployment.client() as client:
        first = run_job(client, "sentiment", [text])
        again = run_job(client, "sentiment", [text, f"another {text}"])

    assert first["results"][0]["cached"] is False  # type: ignore[index]
    cached, fresh = again["results"]  # type: ignore[misc]
    assert cached["cached"] is True and fresh["cached"] is False
    assert cached["label"] == first["results"][0]["label"]  # type: ignore[index]
    assert cached["version"] == first["results"][0]["version"]  # type: ignore[index]


def test_a_text_cached_through_http_is_served_cached_to_a_bulk_file(
    deployment: Deployment, tmp_path: Path
) -> None:
    text = f"a tender , wry and wholly absorbing film {uuid.uuid4()}"
    with deployment.client() as client:
        first = run_job(client, "sentiment", [text])
    source, results = tmp_path / "nightly.jsonl", tmp_path / "results.jsonl"
    source.write_text(json.dumps({"id": "doc-1", "text": f"  {text} "}) + "\n", encoding="utf-8")

    deployment.stack.run("process", str(source), "--task", "sentiment", "--output", str(results))

    (line,) = [json.loads(row) for row in results.read_text(encoding="utf-8").splitlines()]
    assert first["results"][0]["cached"] is False  # type: ignore[index]
    assert line["id"] == "doc-1" and line["result"]["cached"] is True  # another door
    assert (line["result"]["label"], line["result"]["version"]) == (
        first["results"][0]["label"],  # type: ignore[index]
        first["results"][0]["version"],  # type: ignore[index]
    )


def test_interactive_work_overtakes_a_bulk_backlog_which_still_finishes(
    deployment: Deployment,
) -> None:
    # Four jobs of 256: twice the default max_items (512), so bulk waits in the worker.
    backlog = [
        [f"{'a long bulk review that goes on and on ' * 6}{uuid.uuid4()}" for _ in range(256)]
        for _ in range(4)
    ]
    with deployment.client() as client:
        bulk = [
            client.post(
                "/v1/jobs", json={"task": "sentiment", "priority": "bulk", "inputs": inputs}
            ).json()
            for inputs in backlog
        ]
        time.sleep(0.5)  # the worker is busy with the first bulk batch now
        interactive = [
            client.post(
                "/v1/jobs",
                json={"task": "sentiment", "inputs": [f"a quick check {i} {uuid.uuid4()}"]},
            ).json()
            for i in range(3)
        ]
        # They wait at most for a batch in flight to end; on a slow CPU (ONNX fp32 on 2 cores
        # without AVX512) one batch of 512 long texts takes tens of seconds, so the order is
        # what is checked below, not a deadline.
        done = [wait_job(client, job["id"], 120) for job in interactive]
        bulk_then = [client.get(f"/v1/jobs/{job['id']}").json() for job in bulk]
        bulk_done = [wait_job(client, job["id"], 120) for job in bulk]

    assert all(job["status"] == "succeeded" for job in done)
    # Served in the next batch, ahead of the bulk messages that were already waiting...
    assert sum(job["counts"]["pending"] for job in bulk_then) > 0
    last_bulk = max(job["finished_at"] for job in bulk_done)
    assert all(job["finished_at"] < last_bulk for job in done)
    # ...and bulk was not starved.
    assert all(job["status"] == "succeeded" for job in bulk_done)
    interactive_share = [
        json.loads(line)["interactive"]
        for line in deployment.stack.log("worker").splitlines()
        if '"batch_flushed"' in line
    ]
    assert max(interactive_share) == 3  # all three rode together in one batch
