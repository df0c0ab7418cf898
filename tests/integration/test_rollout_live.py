"""A rollout on live jobs, as an operator runs it: `inferq serve`, `inferq worker` and `inferq
beat` as separate processes on PostgreSQL and Redis, the rollout changed with the CLI while they
run, jobs sent over HTTP. The worker is never restarted: every change reaches it through the
database within INFERQ_ROLLOUT_REFRESH_SECONDS.

The champion is the shipped MiniLM artefact; the canary and the shadow are `logreg` versions
trained on a slice of SST-2 into the deployment's model store (tests/versions.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.jobs.submit import input_hash
from core.rollout.state import bucket
from tests.integration.conftest import Deployment, deployed
from tests.integration.test_rollout import sst2_texts
from tests.versions import tiny_sst2, train_logreg

pytestmark = pytest.mark.integration

REFRESH_SECONDS = 1.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, list[str]]]:
    data_dir = tmp_path_factory.mktemp("live")
    sst2 = tiny_sst2(tmp_path_factory.mktemp("sst2"))
    trained = [train_logreg(data_dir, sst2, c).card["version"] for c in (0.5, 8.0)]
    env = {"INFERQ_ROLLOUT_REFRESH_SECONDS": str(REFRESH_SECONDS)}
    with deployed(data_dir, 12, **env) as deployment:
        yield deployment, trained


def run_job(deployment: Deployment, texts: list[str]) -> list[dict[str, Any]]:
    with deployment.client() as client:
        created = client.post("/v1/jobs", json={"task": "sentiment", "inputs": texts})
        assert created.status_code == 202, created.text
        job = client.get(created.headers["location"], params={"wait": 30}).json()
    assert job["status"] == "succeeded", job
    return sorted(job["results"], key=lambda r: r["index"])


def cli(deployment: Deployment, *args: str) -> str:
    out = deployment.stack.run("models", *args)
    time.sleep(REFRESH_SECONDS + 0.5)  # every process's view of the rollout is this fresh
    return out


def test_a_canary_a_shadow_a_promotion_and_a_rollback_on_live_jobs(
    live: tuple[Deployment, list[str]],
) -> None:
    deployment, (canary, shadow) = live
    worker_pid = deployment.stack.processes["worker"].pid
    shipped = run_job(deployment, ["warm"])[0]["version"]

    cli(deployment, "rollout", "sentiment", "--canary", canary, "--percent", "10")
    texts = sst2_texts(200)
    results = run_job(deployment, texts)
    expected = [
        canary if bucket(canary, input_hash("sentiment", t)) < 10 else shipped for t in texts
    ]
    assert [r["version"] for r in results] == expected
    assert 0.04 < expected.count(canary) / len(texts) < 0.16
    assert {(r["tier"], r["degraded"]) for r in results} == {("primary", False)}

    cli(deployment, "rollout", "sentiment", "--shadow", shadow)
    shadowed = [
        t for t in sst2_texts(100, skip=200) if bucket(canary, input_hash("sentiment", t)) >= 10
    ]
    run_job(deployment, shadowed)
    with deployment.client() as client:
        body = client.get("/v1/models/sentiment/rollout").json()
        metrics = client.get("/metrics").text
    assert (body["champion"], body["canary"], body["shadow"]) == (shipped, canary, shadow)
    shadow_row = next(row for row in body["versions"] if row["role"] == "shadow")
    assert shadow_row["compared"] == len(shadowed)
    assert 0.5 < body["shadow_agreement"] < 1.0  # MiniLM and a 3,000-phrase logreg differ
    gauge = {f.name: f for f in text_string_to_metric_families(metrics)}
    [sample] = gauge["inferq_rollout_agreement"].samples
    assert sample.labels == {"task": "sentiment", "version": shadow}
    assert sample.value == pytest.approx(body["shadow_agreement"])

    cli(deployment, "promote", "sentiment", canary)
    assert {r["version"] for r in run_job(deployment, sst2_texts(20, skip=300))} == {canary}
    cli(deployment, "rollback", "sentiment")
    assert {r["version"] for r in run_job(deployment, sst2_texts(20, skip=320))} == {shipped}

    assert deployment.stack.processes["worker"].pid == worker_pid  # never restarted
    trail = deployment.stack.run("audit", "--action", "model.")
    for action in ("model.canary", "model.shadow", "model.promote", "model.rollback"):
        assert action in trail


def test_the_cli_refuses_a_version_this_machine_does_not_have(
    live: tuple[Deployment, list[str]],
) -> None:
    deployment, _ = live
    with pytest.raises(Exception) as refused:
        deployment.stack.run("models", "promote", "sentiment", "feedfacecafe")
    assert "no sentiment version 'feedfacecafe'" in str(getattr(refused.value, "stderr", ""))


def test_versions_lists_the_shipped_and_trained_versions_with_their_roles(
    live: tuple[Deployment, list[str]], tmp_path: Path
) -> None:
    deployment, (canary, shadow) = live
    listing = deployment.stack.run("models", "versions", "sentiment")
    assert canary in listing and shadow in listing and "shipped" in listing
