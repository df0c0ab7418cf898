"""Drift on a real Redis (db 0) and a real PostgreSQL: worker batches feed the shared window, and
the detector, the API route and the gauges read it.

The served model is the real light tier (TF-IDF + logistic regression, CPU, no torch), configured
as the `sentiment` primary through INFERQ_TASKS, so the window is compared with the light
artefact's shipped profile. bench/drift.py measures the same with the MiniLM primary.
"""

from __future__ import annotations

import csv
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from core.config import Settings, get_settings
from core.db.session import Database
from core.inference.drift_profile import held_out_split
from core.inference.engine import InferenceEngine, Output
from core.inference.light import TfidfSentiment
from core.jobs.execute import Worker, run_items
from core.jobs.lifecycle import Claim, ClaimedItem
from core.jobs.queries import get_job
from core.jobs.submit import JobRequest, submit_job
from core.security.keys import local_tenant_id
from core.telemetry import drift
from tests.services import fresh_redis_db

pytestmark = pytest.mark.integration

REDIS_DB = 0
WINDOW = 500
STEP = 25  # items per worker batch
LIGHT_PRIMARY = {
    "sentiment": {"chain": [{"tier": "primary", "adapter": "core.inference.light:TfidfSentiment"}]}
}
AG_NEWS_TSV = Path(__file__).resolve().parents[2] / "data" / "agnews" / "test.tsv"


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    with fresh_redis_db(REDIS_DB) as url:
        monkeypatch.setenv("INFERQ_CACHE_URL", url)
        monkeypatch.setenv("INFERQ_DRIFT_WINDOW", str(WINDOW))
        monkeypatch.setenv("INFERQ_TASKS", json.dumps(LIGHT_PRIMARY))
        get_settings.cache_clear()
        yield get_settings()


@pytest.fixture(scope="module")
def light() -> TfidfSentiment:
    return TfidfSentiment.load()


def agnews(n: int, seed: int = 7) -> list[str]:
    with AG_NEWS_TSV.open(encoding="utf-8", newline="") as handle:
        texts = [row[0] for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return random.Random(seed).sample(texts, n)


def serve(settings: Settings, model: TfidfSentiment, texts: list[str]) -> None:
    """One worker batch's worth of primary-tier results, handed to the worker's drift hook."""
    items = [ClaimedItem(i, i, text, f"h{i}") for i, text in enumerate(texts)]
    outcomes = {
        item.id: Output(prediction, model.name, model.version, "primary", degraded=False)
        for item, prediction in zip(items, model.predict(texts), strict=True)
    }
    drift.observe(settings, [Claim(uuid.uuid4(), "sentiment", "bulk", items)], outcomes)


def test_news_after_sst2_is_flagged_within_one_window_and_sst2_windows_raise_no_alarm(
    settings: Settings, light: TfidfSentiment
) -> None:
    _, unseen = held_out_split()  # the profile was made from the other half
    rng = random.Random(13)
    stream = [rng.choice(unseen) for _ in range(10 * WINDOW)]
    alarms = []
    for served in range(STEP, len(stream) + 1, STEP):
        serve(settings, light, stream[served - STEP : served])
        if served >= WINDOW and served % (2 * STEP) == 0:
            report = drift.check(settings, "sentiment")
            if report.drifted:
                alarms.append((served, report.signals))
    assert alarms == []

    news = agnews(WINDOW)
    flagged_at = None
    for served in range(STEP, len(news) + 1, STEP):
        serve(settings, light, news[served - STEP : served])
        report = drift.check(settings, "sentiment")
        if report.drifted and flagged_at is None:
            flagged_at = served
    assert flagged_at is not None, report.signals
    assert flagged_at <= WINDOW
    # The window is the last WINDOW items of all workers, not a growing list.
    client = redis.Redis.from_url(settings.resolved_cache_url or "")
    assert client.llen(drift.WINDOW_KEY.format(task="sentiment")) == WINDOW


def test_a_worker_batch_adds_its_primary_results_to_the_shared_window(
    settings: Settings, pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERQ_DATABASE_URL", pg_db.url)
    monkeypatch.setattr("core.jobs.outbox.relay_after_commit", lambda *_args: None)
    worker = Worker(pg_db, InferenceEngine("cpu"), settings)
    texts = ["a gorgeous , witty , seductive movie .", "dull and tedious", "Stocks fell sharply"]
    with pg_db.transaction() as session:
        tenant = local_tenant_id(session)
        job = submit_job(
            session, settings, tenant_id=tenant, request=JobRequest("sentiment", texts)
        ).job
        item_ids = [item.id for item in job.items]
    run_items(worker, job.id, item_ids)

    with pg_db.read() as session:
        results = [item.result for item in get_job(session, tenant, job.id).items]
    window = drift.window_for(settings).read("sentiment")
    assert len(window) == 3
    served = sorted((r.label, round(r.score, 4)) for r in results if r is not None)
    assert sorted((w["l"], w["c"]) for w in window) == served
    assert sorted(w["n"] for w in window) == [3, 3, 5]


def test_route_and_gauges_read_the_window_that_workers_share(
    settings: Settings, sqlite_db: Database, light: TfidfSentiment
) -> None:
    news = agnews(WINDOW)
    for start in range(0, WINDOW, STEP):
        serve(settings, light, news[start : start + STEP])
    app_settings = settings.model_copy(
        update={"database_url": sqlite_db.url, "require_api_keys": False}
    )
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        body: dict[str, Any] = client.get("/v1/models/sentiment/drift").json()
        metrics = client.get("/metrics").text
    assert body["window"]["size"] == WINDOW
    assert body["reference"]["model"] == light.name
    assert body["drifted"] is True
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    detected = {s.labels["task"]: s.value for s in families["inferq_drift_detected"].samples}
    assert detected == {"sentiment": 1.0}


def test_results_of_another_version_than_the_profiled_one_stay_out_of_the_window(
    settings: Settings, light: TfidfSentiment
) -> None:
    texts = ["a gorgeous , witty , seductive movie .", "dull and tedious"]
    items = [ClaimedItem(i, i, text, f"h{i}") for i, text in enumerate(texts)]
    claims = [Claim(uuid.uuid4(), "sentiment", "bulk", items)]
    for version in ("c0ffeec0ffee", light.version):  # a canary's results, then the profiled one's
        outcomes = {
            item.id: Output(prediction, light.name, version, "primary", degraded=False)
            for item, prediction in zip(items, light.predict(texts), strict=True)
        }
        drift.observe(settings, claims, outcomes)
        if version != light.version:
            assert drift.window_for(settings).read("sentiment") == []
    assert len(drift.window_for(settings).read("sentiment")) == len(texts)
