"""The HTTP job API against a real deployment: PostgreSQL, Redis, a Celery worker running the
real transformer, and beat — each a separate `inferq` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Deployment
from tests.services import free_port, healthy, wait_for

pytestmark = pytest.mark.integration

POSITIVE = "a warm , funny and deeply moving film that i loved from start to finish ."
NEGATIVE = "a tedious , clumsy mess with flat acting and a script that never works ."
RESULT_FIELDS = {"index", "label", "score", "model", "version", "tier", "degraded", "cached"}


def test_submitted_job_reaches_succeeded_with_a_result_per_input(deployment: Deployment) -> None:
    with deployment.client() as client:
        created = client.post(
            "/v1/jobs", json={"task": "sentiment", "inputs": [POSITIVE, NEGATIVE]}
        )
        assert created.status_code == 202, created.text
        assert created.headers["location"] == f"/v1/jobs/{created.json()['id']}"

        job = client.get(created.headers["location"], params={"wait": 30}).json()

    assert job["status"] == "succeeded", job
    results = job["results"]
    assert [r["index"] for r in results] == [0, 1]
    assert all(set(r) >= RESULT_FIELDS for r in results)
    assert [r["label"] for r in results] == ["positive", "negative"]
    assert all(r["tier"] == "primary" and not r["degraded"] for r in results)
    assert all(0.5 < r["score"] <= 1.0 for r in results)
    assert results[0]["model"] and results[0]["version"]


def test_embed_task_returns_384_dimensional_vectors(deployment: Deployment) -> None:
    with deployment.client() as client:
        created = client.post("/v1/jobs", json={"task": "embed", "inputs": ["hello world"]})
        job = client.get(created.headers["location"], params={"wait": 30}).json()

    assert job["status"] == "succeeded", job
    vector = job["results"][0]["embedding"]
    assert len(vector) == 384
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-3


def test_same_idempotency_key_and_body_returns_the_same_job(deployment: Deployment) -> None:
    body = {"task": "sentiment", "inputs": [POSITIVE]}
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    with deployment.client() as client:
        first = client.post("/v1/jobs", json=body, headers=headers)
        second = client.post("/v1/jobs", json=body, headers=headers)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"


def test_same_idempotency_key_with_another_body_is_422(deployment: Deployment) -> None:
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    with deployment.client() as client:
        client.post("/v1/jobs", json={"task": "sentiment", "inputs": [POSITIVE]}, headers=headers)
        reused = client.post(
            "/v1/jobs", json={"task": "sentiment", "inputs": [NEGATIVE]}, headers=headers
        )

    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert "Idempotency-Key" in reused.json()["detail"]


def test_cancelled_job_stays_cancelled_and_its_queued_inputs_never_run(
    deployment: Deployment,
) -> None:
    with deployment.client() as client:
        # Keep the single worker busy so the target job's messages wait in the queue.
        busy = client.post(
            "/v1/jobs",
            json={
                "task": "sentiment",
                "priority": "bulk",
                "inputs": [f"{POSITIVE} {i}" * 8 for i in range(256)],
            },
        )
        target = client.post(
            "/v1/jobs",
            json={
                "task": "sentiment",
                "priority": "bulk",
                "inputs": [f"{NEGATIVE} {i}" for i in range(128)],
            },
        )
        cancelled = client.delete(target.headers["location"])
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"

        client.get(busy.headers["location"], params={"wait": 30})
        final = client.get(target.headers["location"]).json()
        again = client.delete(target.headers["location"])

    assert final["status"] == "cancelled"
    assert final["counts"]["cancelled"] >= 128 - 32  # at most one message had been reserved
    assert len(final["results"]) == final["counts"]["succeeded"]
    assert again.status_code == 409


def test_another_tenant_cannot_see_or_cancel_a_job(deployment: Deployment) -> None:
    with deployment.client() as alice:
        location = alice.post("/v1/jobs", json={"task": "sentiment", "inputs": [POSITIVE]}).headers[
            "location"
        ]
    with deployment.client(deployment.other_key) as bob:
        assert bob.get(location).status_code == 404
        assert bob.delete(location).status_code == 404
        listed = bob.get("/v1/jobs").json()["data"]
    assert location.rsplit("/", 1)[1] not in {job["id"] for job in listed}


def test_requests_without_a_valid_key_are_401(deployment: Deployment) -> None:
    with deployment.client("iq_not-a-key") as client:
        wrong = client.get("/v1/jobs")
    with deployment.client() as client:
        missing = client.get("/v1/jobs", headers={"Authorization": ""})

    assert wrong.status_code == missing.status_code == 401
    assert wrong.headers["content-type"] == "application/problem+json"


def test_job_list_pages_with_a_cursor(deployment: Deployment) -> None:
    with deployment.client() as client:
        ids = [
            client.post("/v1/jobs", json={"task": "sentiment", "inputs": [f"text {i}"]}).json()[
                "id"
            ]
            for i in range(3)
        ]
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/jobs", params=params).json()
            seen.extend(job["id"] for job in page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                break

    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)
    assert seen.index(ids[2]) < seen.index(ids[0])  # newest first


def test_readiness_checks_database_and_broker(deployment: Deployment) -> None:
    with deployment.client() as client:
        ready = client.get("/readyz")
        docs = client.get("/docs")

    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_request_id_follows_the_job_into_the_worker(deployment: Deployment) -> None:
    request_id = uuid.uuid4().hex
    with deployment.client() as client:
        created = client.post(
            "/v1/jobs",
            # A text never sent before: a cached result would never reach the worker.
            json={"task": "sentiment", "inputs": [f"{POSITIVE} {request_id}"]},
            headers={"X-Request-ID": request_id},
        )
        client.get(created.headers["location"], params={"wait": 30})

    assert created.headers["x-request-id"] == request_id

    def worker_lines() -> list[str]:
        return [line for line in deployment.stack.log("worker").splitlines() if request_id in line]

    # The worker logs the batch just after the commit that finished the job, which is what
    # answered the long-poll: give the log line a moment to be written.
    deadline = time.monotonic() + 10
    while not any('"batch_done"' in line for line in worker_lines()):
        assert time.monotonic() < deadline, worker_lines()
        time.sleep(0.05)


def test_the_api_process_never_loads_torch(deployment: Deployment) -> None:
    with deployment.client() as client:
        created = client.post("/v1/jobs", json={"task": "sentiment", "inputs": [POSITIVE]})
        client.get(created.headers["location"], params={"wait": 30})
    api_pid = deployment.stack.processes["api"].pid
    with open(f"/proc/{api_pid}/maps") as maps:
        loaded = maps.read()
    worker_pid = deployment.stack.processes["worker"].pid

    assert "libtorch" not in loaded
    assert "site-packages/torch" not in loaded
    # The check can see torch where it is loaded: the worker's pool child maps libtorch.
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    assert any("libtorch" in Path(f"/proc/{child}/maps").read_text() for child in children)


def test_worker_exports_prometheus_metrics_of_its_pool(deployment: Deployment) -> None:
    with deployment.client() as client:
        fresh = f"{POSITIVE} {uuid.uuid4()}"  # not cached, so the worker runs it
        created = client.post("/v1/jobs", json={"task": "sentiment", "inputs": [fresh]})
        client.get(created.headers["location"], params={"wait": 30})
    port = deployment.stack.env["INFERQ_METRICS_PORT"]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    finished = [
        line
        for line in metrics.splitlines()
        if line.startswith("inferq_items_finished_total{")
        and 'task="sentiment"' in line
        and 'tier="primary"' in line
    ]
    assert finished and float(finished[0].rsplit(" ", 1)[1]) >= 1


def test_several_api_processes_serve_jobs_and_add_up_their_metrics(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    port = free_port()
    api = stack.start("api-workers", "serve", "--workers", "2", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(url), 60, "`inferq serve --workers 2`", stack, "api-workers")
        headers = {"Authorization": f"Bearer {deployment.key}"}
        jobs = []
        for n in range(6):  # a connection each: the kernel hands them to either process
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                body = {"task": "sentiment", "inputs": [f"{POSITIVE} {uuid.uuid4()} {n}"]}
                response = client.post("/v1/jobs", json=body)
                assert response.status_code == 202, response.text
                jobs.append(response.json()["id"])
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            statuses = [
                client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()["status"]
                for job_id in jobs
            ]
        processes = Path(f"/proc/{api.pid}/task/{api.pid}/children").read_text().split()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        stack.kill("api-workers", signal.SIGTERM)

    assert statuses == ["succeeded"] * 6
    assert len(processes) >= 2, "uvicorn should have started two API processes"
    submitted = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("inferq_jobs_submitted_total{") and 'door="http"' in line
    ]
    assert submitted == [6.0], metrics  # both processes' counts, added up


def test_several_api_processes_need_distributed_mode(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--workers", "2"],
        env={**env, "INFERQ_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--workers needs distributed mode" in done.stderr
