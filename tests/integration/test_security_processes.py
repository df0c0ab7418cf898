"""Limits and secrets across real processes: two `inferq serve` processes spend one tenant's rate
budget together (counted in Redis), and a full run (API, beat, worker, a webhook delivered, the
signing secret read and rotated, refused credentials) leaves no key or secret in any log."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import stack_env
from tests.integration.conftest import deployed
from tests.receiver import Receiver
from tests.services import (
    Stack,
    free_port,
    fresh_postgres_database,
    fresh_redis_db,
    healthy,
    wait_for,
)

pytestmark = pytest.mark.integration

JOB = {"task": "sentiment", "inputs": ["a fine film"]}


@pytest.fixture
def two_apis(tmp_path: Path) -> Iterator[tuple[Stack, list[str], str]]:
    with fresh_postgres_database() as pg_url, fresh_redis_db(5) as redis_url:
        env = stack_env(pg_url, redis_url, tmp_path, INFERQ_RATE_LIMITS="jobs:write=10/minute")
        stack = Stack(env, tmp_path)
        try:
            stack.run("db", "upgrade")
            key = stack.run("keys", "create", "acme")
            urls = []
            for name in ("api-a", "api-b"):
                port = free_port()
                stack.start(name, "serve", "--port", str(port), "--workers", "1")
                urls.append(f"http://127.0.0.1:{port}")
            for url, name in zip(urls, ("api-a", "api-b"), strict=True):
                wait_for(lambda url=url: healthy(url), 60, f"{name} to answer", stack, name)
            yield stack, urls, key
        finally:
            stack.stop_all()


def test_two_api_processes_spend_one_rate_budget(two_apis: tuple[Stack, list[str], str]) -> None:
    _, urls, key = two_apis
    headers = {"Authorization": f"Bearer {key}"}

    with httpx.Client(headers=headers, timeout=30) as client:
        answers = [
            client.post(f"{url}/v1/jobs", json=JOB)
            for url in itertools.islice(itertools.cycle(urls), 16)
        ]

    statuses = [answer.status_code for answer in answers]
    assert statuses == [202] * 10 + [429] * 6, statuses
    remaining = [answer.headers["RateLimit"].split(";")[1] for answer in answers[:10]]
    assert remaining == [f"r={n}" for n in range(9, -1, -1)]  # one count, whichever process


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def test_no_key_or_secret_reaches_any_log(tmp_path: Path, receiver: Receiver) -> None:
    secret_key = "a-deployment-secret-key-never-logged"
    with deployed(
        tmp_path,
        6,
        INFERQ_SECRET_KEY=secret_key,
        INFERQ_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        INFERQ_WEBHOOK_DISPATCH_INTERVAL_SECONDS="0.5",
        INFERQ_LOG_LEVEL="DEBUG",
    ) as deployment:
        deployment.stack.start("webhooks", "worker", "--queues", "webhooks")
        wait_for(lambda: "ready" in deployment.stack.log("webhooks"), 60, "the webhook sender")
        secrets = _a_full_run(deployment.stack, deployment.key, receiver)
        logs = {path.name: path.read_text(errors="replace") for path in tmp_path.glob("*.log")}

    assert {"api.log", "worker.log", "beat.log", "webhooks.log"} <= set(logs)
    assert sum(len(text) for text in logs.values()) > 10_000  # the logs are really there
    for name, text in logs.items():
        for secret in [deployment.key, deployment.other_key, secret_key, *secrets]:
            assert secret not in text, f"{name} holds a secret ({secret[:6]}…)"
        assert "whsec_" not in text, f"{name} holds a webhook signing secret"


def _a_full_run(stack: Stack, key: str, receiver: Receiver) -> list[str]:
    """Everything that handles a secret: returns the signing secrets it saw."""
    url = stack.api_url
    with httpx.Client(base_url=url or "", headers={"X-API-Key": key}, timeout=60) as client:
        first = client.get("/v1/webhooks/secret").json()["secret"]
        body = {**JOB, "webhook_url": receiver.url}
        job = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"})
        assert job.status_code == 201, job.text
        wait_for(lambda: len(receiver.requests()) == 1, 60, "the webhook")
        second = client.post("/v1/webhooks/secret/rotate").json()["secret"]
        client.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"})
        wait_for(lambda: len(receiver.requests()) == 2, 60, "the second webhook")
        refused = [
            client.get("/v1/jobs", headers={"X-API-Key": key[:-4] + "AAAA"}),
            client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}x"}),
        ]
    assert [answer.status_code for answer in refused] == [401, 401]
    assert len(receiver.requests()[1].headers["webhook-signature"].split()) == 2  # both secrets
    return [first, second, first.removeprefix("whsec_"), second.removeprefix("whsec_")]


def test_the_remote_cli_waits_out_a_429_and_submits_once(
    stack_factory: Any, tmp_path: Path
) -> None:
    stack: Stack = stack_factory(INFERQ_RATE_LIMITS="batches:write=1/3second;default=100/second")
    key = stack.run("keys", "create", "acme")
    url = stack.start_api()
    lines = tmp_path / "reviews.jsonl"
    lines.write_text('{"id": "r1", "text": "fine"}\n{"id": "r2", "text": "dull"}\n')
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}
    spent = httpx.post(
        f"{url}/v1/batches",
        params={"task": "sentiment"},
        content=b'{"text": "x"}\n',
        headers=headers,
    )
    assert spent.status_code == 202  # the budget of this window is spent

    done = subprocess.run(
        [sys.executable, "-m", "cli", "batches", "submit", str(lines)],
        env={**stack.env, "INFERQ_API_URL": url, "INFERQ_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "429" in done.stderr and json.loads(done.stdout)["request_counts"]["total"] == 2
    listed = httpx.get(f"{url}/v1/batches", headers=headers).json()["data"]
    assert len(listed) == 2  # the retried upload made one batch
