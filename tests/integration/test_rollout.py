"""Rollouts on a real PostgreSQL with an in-process worker: a canary's share by input hash, the
cache staying coherent per version, a shadow compared off the result path, changes reaching a
running worker without a restart, the audit trail and the route and gauges that show it all.

The versions are real `logreg` artefacts trained on a slice of SST-2 (tests/versions.py); the
champion is one of them, so no transformer is loaded. tests/integration/test_rollout_live.py does
the same through `inferq serve`, `inferq worker` and the CLI as separate processes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from core.config import Settings, get_settings
from core.db.session import Database
from core.errors import InvalidInput, InvalidTransition, NotFound, UnknownTask
from core.inference.engine import InferenceEngine
from core.inference.light import TfidfSentiment
from core.jobs.execute import Worker, run_items
from core.jobs.queries import get_job
from core.jobs.submit import JobRequest, input_hash, submit_job
from core.rollout import changes
from core.rollout.state import CACHE, Rollout
from core.security.audit import entries
from core.security.keys import local_tenant_id
from tests.versions import SST2, tiny_sst2, train_logreg

pytestmark = pytest.mark.integration

ACTOR = "test:rollout"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    data_dir = tmp_path_factory.mktemp("store")
    sst2 = tiny_sst2(tmp_path_factory.mktemp("sst2"))
    return data_dir, [train_logreg(data_dir, sst2, c).card["version"] for c in (0.5, 2.0, 8.0)]


@pytest.fixture
def store(trained: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the trained versions each test may break."""
    data_dir, versions = trained
    shutil.copytree(data_dir, tmp_path / "data", dirs_exist_ok=True)
    return tmp_path / "data", versions


@pytest.fixture
def settings(
    store: tuple[Path, list[str]], pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    monkeypatch.setenv("INFERQ_DATA_DIR", str(store[0]))
    monkeypatch.setenv("INFERQ_DATABASE_URL", pg_db.url)
    monkeypatch.setenv("INFERQ_ROLLOUT_REFRESH_SECONDS", "0")
    monkeypatch.setenv("INFERQ_MAX_INPUTS_PER_JOB", "1000")
    monkeypatch.setattr("core.jobs.outbox.relay_after_commit", lambda *_args: None)
    get_settings.cache_clear()
    CACHE.clear()
    yield get_settings()
    CACHE.clear()


@pytest.fixture
def worker(settings: Settings, pg_db: Database) -> Worker:
    return Worker(pg_db, InferenceEngine("cpu", data_dir=settings.data_dir), settings)


def sst2_texts(n: int, skip: int = 0) -> list[str]:
    with (SST2 / "test.tsv").open(encoding="utf-8") as lines:
        rows = islice(lines, 1 + skip, 1 + skip + n)
        return [row.split("\t")[0].strip() for row in rows]


def serve(worker: Worker, texts: list[str]) -> list[Any]:
    """Submit one job of `texts` and run it through the worker; its results in order."""
    database, settings = worker.database, worker.settings
    with database.transaction() as session:
        tenant = local_tenant_id(session)
        job = submit_job(
            session, settings, tenant_id=tenant, request=JobRequest("sentiment", texts)
        ).job
        item_ids = [item.id for item in job.items]
    run_items(worker, job.id, item_ids)
    with database.read() as session:
        return [item.result for item in get_job(session, tenant, job.id).items]


def change(database: Database, apply: Any) -> Rollout:
    with database.transaction() as session:
        changed: Rollout = apply(session)
    return changed


def test_a_canary_serves_its_share_by_input_hash_and_the_cache_stays_per_version(
    worker: Worker, pg_db: Database, store: tuple[Path, list[str]]
) -> None:
    data_dir, (champion, canary, _) = store
    change(pg_db, lambda s: changes.promote(s, data_dir, "sentiment", champion, ACTOR))
    rollout = change(
        pg_db, lambda s: changes.set_canary(s, data_dir, "sentiment", canary, 10, ACTOR)
    )
    texts = sst2_texts(400)
    results = serve(worker, texts)

    expected = [rollout.serves(input_hash("sentiment", text)) for text in texts]
    assert [r.version for r in results] == expected
    assert {(r.tier, r.degraded, r.cached) for r in results} == {("primary", False, False)}
    assert 0.05 < expected.count(canary) / len(texts) < 0.15

    again = serve(worker, texts)  # the same texts meet the same versions, now from the cache
    assert [r.version for r in again] == expected
    assert all(r.cached for r in again)
    assert [r.label for r in again] == [r.label for r in results]


def test_the_shadow_is_compared_off_the_result_path(
    worker: Worker, pg_db: Database, store: tuple[Path, list[str]], settings: Settings
) -> None:
    data_dir, (champion, _, shadow) = store
    change(pg_db, lambda s: changes.promote(s, data_dir, "sentiment", champion, ACTOR))
    change(pg_db, lambda s: changes.set_shadow(s, data_dir, "sentiment", shadow, 100, ACTOR))
    texts = sst2_texts(300, skip=400)
    results = serve(worker, texts)
    assert {r.version for r in results} == {champion}

    models = data_dir / "models" / "sentiment-logreg"
    theirs = TfidfSentiment.load(models / champion).predict(texts)
    ours = TfidfSentiment.load(models / shadow).predict(texts)
    agreement = sum(a.label == b.label for a, b in zip(theirs, ours, strict=True)) / len(texts)
    assert agreement < 1.0  # the two versions differ: the rate below means something

    body, metrics = read_api(settings, pg_db)
    assert body["champion"] == champion and body["shadow"] == shadow
    by_role = {row["role"]: row for row in body["versions"]}
    assert by_role["shadow"]["items"] == by_role["shadow"]["compared"] == len(texts)
    assert body["shadow_agreement"] == pytest.approx(agreement)
    assert by_role["champion"]["items"] == len(texts)
    assert by_role["champion"]["mean_confidence"] == pytest.approx(
        sum(p.score or 0.0 for p in theirs) / len(texts)
    )
    gauge = metrics["inferq_rollout_agreement"]
    assert {(s.labels["version"], round(s.value, 6)) for s in gauge.samples} == {
        (shadow, round(agreement, 6))
    }


def test_a_failing_shadow_counts_its_failures_and_the_results_stand(
    worker: Worker, pg_db: Database, store: tuple[Path, list[str]], settings: Settings
) -> None:
    data_dir, (champion, _, shadow) = store
    change(pg_db, lambda s: changes.promote(s, data_dir, "sentiment", champion, ACTOR))
    change(pg_db, lambda s: changes.set_shadow(s, data_dir, "sentiment", shadow, 100, ACTOR))
    shutil.rmtree(data_dir / "models" / "sentiment-logreg" / shadow)  # lost after the change

    results = serve(worker, sst2_texts(50))
    assert {(r.version, r.tier, r.degraded) for r in results} == {(champion, "primary", False)}
    body, _ = read_api(settings, pg_db)
    shadow_row = next(row for row in body["versions"] if row["role"] == "shadow")
    assert (shadow_row["failed"], shadow_row["compared"]) == (50, 0)


def test_changes_reach_a_running_worker_and_are_audited(
    worker: Worker, pg_db: Database, store: tuple[Path, list[str]], settings: Settings
) -> None:
    data_dir, (first, second, _) = store
    texts = iter([[text] for text in sst2_texts(10, skip=800)])

    change(pg_db, lambda s: changes.promote(s, data_dir, "sentiment", first, ACTOR))
    assert serve(worker, next(texts))[0].version == first
    change(pg_db, lambda s: changes.promote(s, data_dir, "sentiment", second, ACTOR))
    assert serve(worker, next(texts))[0].version == second
    back = change(pg_db, lambda s: changes.rollback(s, "sentiment", ACTOR))
    assert back.champion == first
    assert serve(worker, next(texts))[0].version == first
    undo = change(pg_db, lambda s: changes.rollback(s, "sentiment", ACTOR))
    assert undo.champion == second  # as `kubectl rollout undo`: back to the one before

    with pg_db.read() as session:
        trail = [(e.action, e.target, e.actor) for e in entries(session, action="model.")]
    assert trail == [
        ("model.promote", f"sentiment@{first}", ACTOR),
        ("model.promote", f"sentiment@{second}", ACTOR),
        ("model.rollback", f"sentiment@{first}", ACTOR),
        ("model.rollback", f"sentiment@{second}", ACTOR),
    ]
    body, _ = read_api(settings, pg_db)
    assert [h["action"] for h in body["history"]] == ["rollback", "rollback", "promote", "promote"]
    assert body["revision"] == 4


def test_the_first_rollback_returns_to_the_shipped_artefact(
    pg_db: Database, store: tuple[Path, list[str]], settings: Settings
) -> None:
    data_dir, (first, _, _) = store
    change(pg_db, lambda s: changes.promote(s, data_dir, "sentiment", first, ACTOR))
    back = change(pg_db, lambda s: changes.rollback(s, "sentiment", ACTOR))
    assert back.champion is None
    body, _ = read_api(settings, pg_db)
    assert body["champion_is_shipped"] is True
    assert body["champion"] not in (None, first)  # the shipped version's hash


def test_changes_that_make_no_sense_are_refused(
    pg_db: Database, store: tuple[Path, list[str]]
) -> None:
    data_dir, (first, second, _) = store
    with pytest.raises(InvalidTransition, match="no earlier champion"):
        change(pg_db, lambda s: changes.rollback(s, "sentiment", ACTOR))
    with pytest.raises(NotFound, match="no sentiment version 'feedfacecafe'"):
        change(pg_db, lambda s: changes.promote(s, data_dir, "sentiment", "feedfacecafe", ACTOR))
    with pytest.raises(UnknownTask):
        change(pg_db, lambda s: changes.promote(s, data_dir, "nope", first, ACTOR))
    change(pg_db, lambda s: changes.promote(s, data_dir, "sentiment", first, ACTOR))
    with pytest.raises(InvalidTransition, match="champion: a canary must differ"):
        change(pg_db, lambda s: changes.set_canary(s, data_dir, "sentiment", first, 10, ACTOR))
    for percent in (0, 150):
        with pytest.raises(InvalidInput):
            change(
                pg_db,
                lambda s, p=percent: changes.set_canary(s, data_dir, "sentiment", second, p, ACTOR),
            )
    with pytest.raises(InvalidTransition, match="no canary or shadow"):
        change(pg_db, lambda s: changes.stop(s, "sentiment", ACTOR))
    with pg_db.read() as session:
        assert [e.action for e in entries(session, action="model.")] == ["model.promote"]


def read_api(settings: Settings, database: Database) -> tuple[dict[str, Any], dict[str, Any]]:
    app_settings = settings.model_copy(
        update={"database_url": database.url, "require_api_keys": False}
    )
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        response = client.get("/v1/models/sentiment/rollout")
        assert response.status_code == 200, response.text
        metrics = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    return response.json(), families
