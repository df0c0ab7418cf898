"""`inferq status` against a real deployment (PostgreSQL, Redis, `inferq serve|worker|beat`): the
backlog of work waiting, the broker's queues, what the tiers served and the workers that answer,
as JSON and as the live view."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Deployment, deployed
from tests.services import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("status"), 3) as running:
        yield running


def status(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "status", *args],
        env=deployment.stack.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def snapshot(deployment: Deployment) -> dict[str, Any]:
    done = status(deployment, "--json", "--interval", "0.5")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def backlog_of(document: dict[str, Any], task: str, priority: str) -> dict[str, Any]:
    (row,) = [r for r in document["backlog"] if (r["task"], r["priority"]) == (task, priority)]
    return row


def test_status_shows_waiting_work_then_what_was_served(deployment: Deployment) -> None:
    deployment.stack.kill("worker")  # nothing runs: the work waits
    texts = [f"review number {n}: quite good" for n in range(40)]
    with deployment.client() as client:
        for chunk in (texts[:20], texts[20:]):
            answer = client.post(
                "/v1/jobs", json={"task": "sentiment", "inputs": chunk, "priority": "bulk"}
            )
            assert answer.status_code == 202, answer.text

    waiting = snapshot(deployment)

    row = backlog_of(waiting, "sentiment", "bulk")
    assert waiting["mode"] == "distributed" and row["items"] == 40 and row["oldest_seconds"] > 0
    assert backlog_of(waiting, "sentiment", "interactive")["items"] == 0
    assert set(waiting["queues"]) == {"interactive", "bulk", "maintenance", "webhooks"}
    assert waiting["workers"] == []  # the one worker is gone: nobody answers a ping

    deployment.stack.start_worker()
    done = status(deployment, "--watch", "--count", "40", "--interval", "0.5")

    assert done.returncode == 0, done.stderr
    assert "inferq status (distributed)" in done.stdout and "circuit" in done.stdout
    after = snapshot(deployment)
    assert backlog_of(after, "sentiment", "bulk")["items"] == 0
    assert len(after["workers"]) == 1 and after["workers"][0].startswith("celery@")
    served = {(t["task"], t["tier"]): t for t in after["tiers"]}
    assert served[("sentiment", "primary")]["circuit"] == "closed"


def test_status_works_in_embedded_mode_on_its_database(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "INFERQ_DATA_DIR": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    subprocess.run(
        [sys.executable, "-m", "cli", "db", "upgrade"],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )

    done = subprocess.run(
        [sys.executable, "-m", "cli", "status", "--json", "--interval", "0.2"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["mode"] == "embedded" and document["workers"] is None
    assert {row["task"] for row in document["backlog"]} >= {"sentiment", "embed"}
