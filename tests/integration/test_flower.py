"""`inferq flower` against a real deployment: PostgreSQL, Redis db 4, an `inferq worker` process
and an `inferq flower` process, each started as a user starts them. Flower must list the running
worker, keep its UI and HTTP API behind INFERQ_FLOWER_BASIC_AUTH, and leave /metrics open for
Prometheus."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import stack_env
from tests.services import Stack, free_port, fresh_postgres_database, fresh_redis_db, wait_for

pytestmark = pytest.mark.integration

REDIS_DB = 4
LOGIN = ("ops", "flower-test-password")
# Long enough that a heartbeat late on a busy machine never purges a live worker.
PURGE_SECONDS = 30


@dataclass
class Monitored:
    stack: Stack
    flower_url: str
    worker_pid: int


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    data_dir = tmp_path_factory.mktemp("flower")
    with fresh_postgres_database() as pg_url, fresh_redis_db(REDIS_DB) as redis_url:
        env = stack_env(
            pg_url,
            redis_url,
            data_dir,
            INFERQ_FLOWER_BASIC_AUTH=":".join(LOGIN),
            # Flower watches the worker, not its models: no model to load before it is ready.
            INFERQ_WARM_TASKS="[]",
        )
        stack = Stack(env, data_dir)
        try:
            stack.run("db", "upgrade")
            worker = stack.start_worker()
            port = free_port()
            purge = ("--purge-offline-workers", str(PURGE_SECONDS))
            stack.start("flower", "flower", "--port", str(port), *purge)
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: answers(f"{url}/healthcheck"), 60, "Flower to start", stack, "flower")
            yield Monitored(stack, url, worker.pid)
        finally:
            stack.stop_all()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def workers_seen(monitored: Monitored) -> dict[str, Any]:
    response = httpx.get(
        f"{monitored.flower_url}/api/workers", params={"refresh": "1"}, auth=LOGIN, timeout=30
    )
    assert response.status_code == 200, response.text
    workers: dict[str, Any] = response.json()
    return workers


def scrape(monitored: Monitored) -> dict[str, list[Any]]:
    """/metrics fetched as Prometheus fetches it (no credentials), parsed: name -> samples."""
    response = httpx.get(f"{monitored.flower_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def test_flower_lists_the_running_worker(monitored: Monitored) -> None:
    def listed() -> bool:
        workers = workers_seen(monitored)
        return any(w.get("stats", {}).get("pid") == monitored.worker_pid for w in workers.values())

    wait_for(listed, 60, "Flower to list the worker", monitored.stack, "flower")


def test_flower_metrics_report_the_worker_online_without_a_login(monitored: Monitored) -> None:
    def online() -> bool:
        samples = scrape(monitored).get("flower_worker_online", [])
        return any(sample.value == 1 for sample in samples)

    wait_for(online, 60, "flower_worker_online to be 1", monitored.stack, "flower")
    names = {sample.labels["worker"] for sample in scrape(monitored)["flower_worker_online"]}
    assert names == set(workers_seen(monitored)), "metrics and API disagree on the workers"


def test_flower_metrics_pass_prometheus_own_parser(monitored: Monitored) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install -y --no-install-recommends prometheus"
    body = httpx.get(f"{monitored.flower_url}/metrics", timeout=10).text
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Exit 3 is naming advice (lint findings); exit 1 is a parse error: Prometheus could not
    # read the scrape.
    assert done.returncode in (0, 3), done.stdout + done.stderr
    assert "flower_worker_online" in body


@pytest.mark.parametrize("path", ["/api/workers", "/", "/workers"])
def test_flower_ui_and_api_refuse_requests_without_the_login(
    monitored: Monitored, path: str
) -> None:
    response = httpx.get(f"{monitored.flower_url}{path}", timeout=10)
    assert response.status_code == 401
    if not path.startswith("/api/"):  # a browser is asked for the login; API clients are not
        assert response.headers["www-authenticate"].startswith("Basic")


def test_flower_refuses_a_wrong_password(monitored: Monitored) -> None:
    response = httpx.get(
        f"{monitored.flower_url}/api/workers", auth=(LOGIN[0], "wrong"), timeout=10
    )
    assert response.status_code == 401


def test_flower_ui_opens_with_the_login(monitored: Monitored) -> None:
    response = httpx.get(f"{monitored.flower_url}/workers", auth=LOGIN, timeout=10)
    assert response.status_code == 200
    assert "Flower" in response.text


def test_the_password_is_not_on_the_command_line(monitored: Monitored) -> None:
    """ps shows every user the arguments of every process: the login goes by environment."""
    pid = monitored.stack.processes["flower"].pid
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert LOGIN[1] not in arguments


def online_workers(monitored: Monitored) -> set[str]:
    samples = scrape(monitored).get("flower_worker_online", [])
    return {sample.labels["worker"] for sample in samples}


def test_a_stopped_worker_leaves_flower_metrics_after_the_purge_delay(monitored: Monitored) -> None:
    """--purge-offline-workers reaches Flower: a scaled-away worker does not stay a series.
    (Last in this module: it stops the worker.)"""
    wait_for(lambda: online_workers(monitored), 60, "the worker in /metrics", monitored.stack)
    (name,) = online_workers(monitored)
    monitored.stack.kill("worker", signal.SIGTERM)  # warm shutdown: a worker-offline event
    wait_for(
        lambda: name not in online_workers(monitored),
        PURGE_SECONDS + 90,
        f"{name} to be purged from Flower's /metrics",
        monitored.stack,
        "flower",
    )
