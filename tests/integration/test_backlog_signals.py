"""The backlog signals that KEDA scales on, read from a real deployment under load: the API's
/metrics while work waits and after it is done, then the ScaledObjects' own queries (read from
the manifests) evaluated by a real Prometheus server that scrapes that API, and KEDA's rule
turning the answers into replica counts."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Deployment, deployed
from tests.services import REPO, Stack, free_port, healthy, wait_for

pytestmark = pytest.mark.integration

REDIS_DB = 2
TASKS = {
    "alpha": {"chain": [{"tier": "primary", "adapter": "tests.fakes:Paced"}]},
    "beta": {"chain": [{"tier": "primary", "adapter": "tests.fakes:Paced"}]},
}
# What the load submits, per (task, priority): 4 interactive jobs of 60 inputs, one bulk job of
# 40 inputs and a batch of 200 lines (a batch is bulk work).
INTERACTIVE_JOBS, INTERACTIVE_INPUTS = 4, 60
BULK_JOB_INPUTS = 40
BATCH_LINES = 200
LOAD = {
    ("alpha", "interactive"): INTERACTIVE_JOBS * INTERACTIVE_INPUTS,
    ("alpha", "bulk"): BULK_JOB_INPUTS,
    ("beta", "bulk"): BATCH_LINES,
    ("beta", "interactive"): 0,
}
BACKLOG_FAMILIES = (
    "inferq_backlog_items",
    "inferq_oldest_pending_seconds",
    "inferq_backlog_seconds",
)
K8S = REPO / "deploy" / "k8s"
T = TypeVar("T")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --------------------------------------------------------------------------------------------
# Reading the API's /metrics
# --------------------------------------------------------------------------------------------


def scrape(api_url: str) -> Samples:
    response = httpx.get(f"{api_url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    pairs = [
        ((sample.name, tuple(sorted(sample.labels.items()))), sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]
    found = dict(pairs)
    assert len(found) == len(pairs), f"a series shows twice on /metrics: {response.text}"
    return found


@contextmanager
def multiprocess_api(stack: Stack) -> Iterator[str]:
    """`inferq serve --workers 2`: metrics through PROMETHEUS_MULTIPROC_DIR."""
    port = free_port()
    stack.start("api-workers", "serve", "--workers", "2", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(url), 90, "`inferq serve --workers 2`", stack, "api-workers")
        yield url
    finally:
        stack.kill("api-workers", signal.SIGTERM)


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no {name}{labels} on /metrics: the series must always be there"
    return samples[key]


def per_key(samples: Samples, name: str) -> dict[tuple[str, str], float]:
    return {key: value(samples, name, task=key[0], priority=key[1]) for key in LOAD}


# --------------------------------------------------------------------------------------------
# A real Prometheus, and KEDA's rule
# --------------------------------------------------------------------------------------------


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:  # the KEDA queries are what this test is for: never skip it
        pytest.fail("the `prometheus` binary is missing: apt-get install -y prometheus")
    return found


@contextmanager
def prometheus_scraping(api_url: str, workdir: Path) -> Iterator[str]:
    """A Prometheus server scraping the API every second, twice over (two jobs on the same
    target), as it would scrape two API pods: a query that summed over pods would double."""
    target = api_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": [target]}]}
            for name in ("api-pod-a", "api-pod-b")
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("ab")
    server = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 60, "Prometheus to be ready")
        wait_for(lambda: _scraped_both(url), 60, "Prometheus to scrape the API as both pods")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _scraped_both(url: str) -> bool:
    found = instant(url, "count by (job) (inferq_backlog_items)")
    return len(found) == 2


def instant(prometheus: str, query: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": query, **({"time": f"{at:.3f}"} if at is not None else {})}
    response = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10)
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scaled_object(file: str, name: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all((K8S / file).read_text()):
        if doc and doc.get("kind") == "ScaledObject" and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no ScaledObject {name} in {file}")


def backlog_triggers(so: dict[str, Any]) -> list[dict[str, str]]:
    return [
        t["metadata"]
        for t in so["spec"]["triggers"]
        if t["type"] == "prometheus" and "inferq_backlog_seconds" in t["metadata"]["query"]
    ]


def trigger_value(prometheus: str, trigger: dict[str, str], at: float | None = None) -> float:
    """What KEDA's prometheus scaler reads: the query must answer exactly one sample."""
    result = instant(prometheus, trigger["query"], at)
    assert len(result) == 1, f"KEDA needs one sample from {trigger['query']!r}, got {result}"
    return float(result[0]["value"][1])


def keda_replicas(so: dict[str, Any], values: list[tuple[dict[str, str], float]]) -> int:
    """KEDA's rule: while no trigger passes its activationThreshold the target sits at
    minReplicaCount (0 allowed); otherwise the HPA asks ceil(value / threshold) per trigger
    (AverageValue), takes the largest, and clamps it to [max(min, 1), maxReplicaCount]."""
    spec = so["spec"]
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    active = any(v > float(t.get("activationThreshold", "0")) for t, v in values)
    if not active:
        return int(low)
    wanted = max(math.ceil(v / float(t["threshold"])) for t, v in values)
    return int(min(high, max(low, 1, wanted)))


def evaluate(
    prometheus: str, so: dict[str, Any], at: float | None = None
) -> tuple[int, list[float]]:
    values = [(t, trigger_value(prometheus, t, at)) for t in backlog_triggers(so)]
    return keda_replicas(so, values), [v for _, v in values]


# --------------------------------------------------------------------------------------------
# The deployment and its load
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    env = {
        "INFERQ_TASKS": json.dumps(TASKS),
        "INFERQ_WARM_TASKS": '["alpha"]',
        # About 7 inputs a second with one worker process: the load takes about a minute to
        # drain, long enough to read it while it drains.
        "INFERQ_TEST_SECONDS_PER_TEXT": "0.15",
        # Micro-batches of 32: the backlog drains in steps a scrape can see (one batch of all
        # 480 inputs would take it from full to 0 in one commit).
        "INFERQ_BATCHING": json.dumps({"default": {"max_items": 32}}),
        "INFERQ_BACKLOG_CACHE_SECONDS": "1",
        "INFERQ_BACKLOG_RATE_WINDOW_SECONDS": "10",
        "INFERQ_SWEEP_INTERVAL_SECONDS": "2",
    }
    with deployed(tmp_path_factory.mktemp("backlog"), REDIS_DB, **env) as running:
        yield running


def submit_load(client: httpx.Client, run: str) -> tuple[list[str], str]:
    jobs = []
    for n in range(INTERACTIVE_JOBS):
        inputs = [f"{run} interactive {n}-{i} good" for i in range(INTERACTIVE_INPUTS)]
        jobs.append(client.post("/v1/jobs", json={"task": "alpha", "inputs": inputs}))
    inputs = [f"{run} bulk {i} fine" for i in range(BULK_JOB_INPUTS)]
    jobs.append(
        client.post("/v1/jobs", json={"task": "alpha", "inputs": inputs, "priority": "bulk"})
    )
    for response in jobs:
        assert response.status_code == 202, response.text
    lines = b"".join(
        json.dumps({"id": f"line-{i}", "text": f"{run} line {i} okay"}).encode() + b"\n"
        for i in range(BATCH_LINES)
    )
    batch = client.post(
        "/v1/batches",
        params={"task": "beta"},
        headers={"Content-Type": "application/x-ndjson"},
        content=lines,
    )
    assert batch.status_code == 202, batch.text
    return [response.json()["id"] for response in jobs], str(batch.json()["id"])


def all_done(client: httpx.Client, job_ids: list[str], batch_id: str) -> bool:
    jobs_over = all(
        client.get(f"/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed")
        for job_id in job_ids
    )
    return jobs_over and client.get(f"/v1/batches/{batch_id}").json()["status"] == "completed"


def eventually(read: Callable[[], T], accept: Callable[[T], bool], timeout: float, what: str) -> T:
    """The first reading `accept` takes, or a failure showing the last one."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = read()
        if accept(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: never happened within {timeout} s; last reading {last}")


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


def test_backlog_signals_rise_under_load_drive_keda_and_return_to_zero(
    stack: Deployment, tmp_path: Path
) -> None:
    api = stack.stack.api_url or ""
    worker_so = scaled_object("keda-worker.yaml", "inferq-worker")
    gpu_so = scaled_object("worker-gpu.yaml", "inferq-worker-gpu")
    (interactive_trigger,) = [t for t in backlog_triggers(worker_so) if "interactive" in t["query"]]

    # At rest before any work: every (task, priority) is there, at 0.
    idle = scrape(api)
    for family in BACKLOG_FAMILIES:
        assert set(per_key(idle, family).values()) == {0.0}, family
    assert value(idle, "inferq_webhook_backlog") == 0

    # The worker stops: submitted work waits.
    stack.stack.kill("worker", signal.SIGTERM)
    with stack.client() as client, prometheus_scraping(api, tmp_path) as prometheus:
        job_ids, batch_id = submit_load(client, run=str(time.time_ns()))

        loaded = eventually(
            lambda: scrape(api),
            lambda s: per_key(s, "inferq_backlog_items") == LOAD,
            60,
            "the backlog to show every submitted input",
        )
        first_age = per_key(loaded, "inferq_oldest_pending_seconds")
        assert value(loaded, "inferq_queue_messages", queue="interactive") > 0

        later = eventually(
            lambda: scrape(api),
            lambda s: all(
                per_key(s, "inferq_oldest_pending_seconds")[key] > first_age[key]
                for key, n in LOAD.items()
                if n
            ),
            30,
            "the oldest pending item to age",
        )
        assert per_key(later, "inferq_backlog_items") == LOAD, "nothing ran: the backlog stays"
        for key, n in LOAD.items():
            drain = per_key(later, "inferq_backlog_seconds")[key]
            if n:  # nothing finishes, so it says how long the oldest input has waited
                assert 0 < drain < math.inf, (key, drain)
                assert drain == per_key(later, "inferq_oldest_pending_seconds")[key]
            else:
                assert drain == 0, (key, drain)

        # Several API processes: the one answering a scrape computes the backlog once, so it
        # is the same figure, never one copy per process added up.
        with multiprocess_api(stack.stack) as multi:
            for _ in range(4):  # a connection each: the kernel hands them to either process
                assert per_key(scrape(multi), "inferq_backlog_items") == LOAD

        # KEDA while loaded: once the interactive backlog-seconds passes its 30 s target, the
        # CPU workers are asked to grow; the bulk backlog is too young to wake a GPU.
        threshold = float(interactive_trigger["threshold"])
        eventually(
            lambda: trigger_value(prometheus, interactive_trigger),
            lambda v: v > threshold,
            120,
            "the interactive backlog-seconds to pass its target in Prometheus",
        )
        at = time.time()
        workers, worker_values = evaluate(prometheus, worker_so, at)
        interactive_value = trigger_value(prometheus, interactive_trigger, at)
        assert interactive_value in worker_values
        expected = min(
            worker_so["spec"]["maxReplicaCount"], math.ceil(interactive_value / threshold)
        )
        assert workers == expected >= 2, (workers, worker_values)
        # Two scrape jobs ("pods") hold each series: the query takes the max over them and over
        # tasks (alpha is the only task with interactive work), never a sum.
        raw = instant(prometheus, 'inferq_backlog_seconds{priority="interactive"}', at)
        alpha = [float(r["value"][1]) for r in raw if r["metric"]["task"] == "alpha"]
        assert len(alpha) == 2, raw
        assert interactive_value == max(alpha)
        gpus, gpu_values = evaluate(prometheus, gpu_so, at)
        assert gpus == 0, f"bulk backlog-seconds {gpu_values} is under the activation threshold"

        # The worker comes back: the backlog drains to 0 and KEDA returns to its resting size.
        stack.stack.start_worker()
        draining = eventually(
            lambda: scrape(api),
            lambda s: 0 < sum(per_key(s, "inferq_backlog_items").values()) < sum(LOAD.values()),
            120,
            "the backlog to start draining",
        )
        for key, drain in per_key(draining, "inferq_backlog_seconds").items():
            assert 0 <= drain < math.inf, (key, drain)
            assert (drain > 0) == (per_key(draining, "inferq_backlog_items")[key] > 0), key
        wait_for(lambda: all_done(client, job_ids, batch_id), 300, "the load to finish")

        rest = eventually(
            lambda: scrape(api),
            lambda s: sum(per_key(s, "inferq_backlog_items").values()) == 0,
            30,
            "the backlog to read 0",
        )
        for family in BACKLOG_FAMILIES:
            assert set(per_key(rest, family).values()) == {0.0}, family

        eventually(
            lambda: evaluate(prometheus, worker_so)[1],
            lambda values: values and max(values) == 0,
            60,
            "Prometheus to see the backlog at 0",
        )
        assert evaluate(prometheus, worker_so)[0] == worker_so["spec"]["minReplicaCount"] == 1
        assert evaluate(prometheus, gpu_so)[0] == 0
