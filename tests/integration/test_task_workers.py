"""A worker that serves one task alone (`inferq worker --tasks langid`), as a deployment runs it:
PostgreSQL, Redis, `inferq serve`, beat, a general worker and a langid worker, each its own
process, with INFERQ_TASK_QUEUES=["langid"]. The workers' own log lines (JSON, one per event)
say which of them ran which job: a batch's line carries the request ids of the jobs it ran."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Deployment, deployed
from tests.services import free_port

pytestmark = pytest.mark.integration

FRENCH = "Le chat dort tranquillement sur le canapé du salon depuis ce matin."
REVIEW = "a warm , funny and deeply moving film that i loved from start to finish ."


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data_dir = tmp_path_factory.mktemp("task-workers")
    with deployed(data_dir, 12, INFERQ_TASK_QUEUES='["langid"]') as running:
        metrics_dir = data_dir / "langid-worker-metrics"  # apart from the general worker's
        metrics_dir.mkdir()
        own = {
            "INFERQ_METRICS_PORT": str(free_port()),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        running.stack.start_worker("langid-worker", 1, "--tasks", "langid", env=own)
        yield running


def events(log: str, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return [event for event in lines if event.get("event") == name]


def ran(log: str) -> set[str]:
    """Request ids of the jobs whose items this worker's batches ran."""
    return {rid for event in events(log, "batch_done") for rid in event.get("request_ids", [])}


def submit(client: httpx.Client, task: str, text: str) -> tuple[dict[str, Any], str]:
    created = client.post("/v1/jobs", json={"task": task, "inputs": [text]})
    assert created.status_code == 202, created.text
    for _ in range(4):  # long polls of up to 30 s each
        job = client.get(created.headers["location"], params={"wait": 30}).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
    return job, created.headers["x-request-id"]


def test_langid_runs_on_its_own_worker_and_sentiment_on_the_general_one(
    deployment: Deployment,
) -> None:
    with deployment.client() as client:
        langid_job, langid_request = submit(client, "langid", FRENCH)
        sentiment_job, sentiment_request = submit(client, "sentiment", REVIEW)

    assert langid_job["status"] == "succeeded", langid_job
    assert langid_job["results"][0]["label"] == "fr"
    assert sentiment_job["status"] == "succeeded", sentiment_job
    assert sentiment_job["results"][0]["label"] == "positive"
    # A batch logs batch_done after its results commit: the job can read as finished first.
    deadline = time.monotonic() + 10
    while True:
        general, langid = deployment.stack.log("worker"), deployment.stack.log("langid-worker")
        if (sentiment_request in ran(general) and langid_request in ran(langid)) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)
    assert langid_request in ran(langid) and langid_request not in ran(general)
    assert sentiment_request in ran(general) and sentiment_request not in ran(langid)


def test_the_langid_worker_loads_only_langid_models(deployment: Deployment) -> None:
    langid = deployment.stack.log("langid-worker")
    loaded = {event["task"] for event in events(langid, "model_loaded")}
    assert loaded == {"langid"}, loaded
    general = deployment.stack.log("worker")
    assert "langid" not in {event["task"] for event in events(general, "model_loaded")}


def test_the_backlog_metrics_read_the_dedicated_queues(deployment: Deployment) -> None:
    body = httpx.get(f"{deployment.stack.api_url}/metrics", timeout=30).text
    queues = set(re.findall(r'inferq_queue_messages\{queue="([^"]+)"\}', body))
    assert {"interactive.langid", "bulk.langid", "interactive", "bulk"} <= queues, queues
