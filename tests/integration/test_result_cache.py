"""The two-level result cache on real PostgreSQL (L3) and Redis (L1): hits do no inference,
work across jobs, and a new model version never serves an old result. The model is a fake
(tests/fakes.py) so that its version can change under the test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import select

from core.config import get_settings
from core.db.models import OutboxMessage
from core.db.session import Database
from core.inference.cache import RedisCache
from core.inference.engine import InferenceEngine
from core.inference.registry import tier_version
from core.jobs.execute import Worker, run_items
from core.jobs.queries import get_job
from core.jobs.submit import JobRequest, submit_job
from core.security.keys import local_tenant_id
from tests.fakes import Healthy

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(pg_db: Database, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Worker]:
    monkeypatch.setenv("INFERQ_DATABASE_URL", pg_db.url)
    monkeypatch.setenv("INFERQ_CACHE_URL", redis_url)
    monkeypatch.setenv(
        "INFERQ_TASKS",
        json.dumps({"cached": {"chain": [{"tier": "primary", "adapter": "tests.fakes:Healthy"}]}}),
    )
    monkeypatch.setattr("core.jobs.outbox.relay_after_commit", lambda *_args: None)
    settings = get_settings()
    yield Worker(pg_db, InferenceEngine("cpu"), settings, RedisCache(redis_url, 60))


def submit_and_run(worker: Worker, text: str) -> dict[str, object]:
    with worker.database.transaction() as session:
        tenant = local_tenant_id(session)
        job = submit_job(
            session, worker.settings, tenant_id=tenant, request=JobRequest("cached", [text])
        ).job
        pending = [item.id for item in job.items if item.status == "queued"]
    if pending:
        run_items(worker, job.id, pending)
    with worker.database.read() as session:
        item = get_job(session, tenant, job.id).items[0]
        assert item.result is not None
        return {
            "version": item.result.version,
            "cached": item.result.cached,
            "label": item.result.label,
        }


def test_a_repeated_text_is_served_from_the_cache_without_inference(worker: Worker) -> None:
    text = f"a good film {uuid.uuid4()}"
    first = submit_and_run(worker, text)
    second = submit_and_run(worker, text)

    assert first["cached"] is False and second["cached"] is True
    assert second["label"] == first["label"]


def test_the_stored_results_answer_when_redis_has_lost_the_entry(
    worker: Worker, redis_url: str
) -> None:
    text = f"a good film {uuid.uuid4()}"
    submit_and_run(worker, text)
    redis.Redis.from_url(redis_url).flushdb()

    assert submit_and_run(worker, text)["cached"] is True  # from PostgreSQL (L3)


def test_a_new_model_version_never_serves_an_old_result(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = f"a good film {uuid.uuid4()}"
    submit_and_run(worker, text)
    monkeypatch.setattr(Healthy, "version", "fake-2")
    tier_version.cache_clear()
    worker.engine._models.clear()  # the worker restarts with the new model

    after = submit_and_run(worker, text)

    assert after == {"version": "fake-2", "cached": False, "label": "positive"}


def test_a_job_whose_every_input_is_cached_is_finished_when_submitted(worker: Worker) -> None:
    known = f"a good film {uuid.uuid4()}"
    submit_and_run(worker, known)
    new = f"a new film {uuid.uuid4()}"

    with worker.database.transaction() as session:
        tenant = local_tenant_id(session)
        answered = submit_job(
            session, worker.settings, tenant_id=tenant, request=JobRequest("cached", [known, known])
        ).job.id
        waiting = submit_job(
            session, worker.settings, tenant_id=tenant, request=JobRequest("cached", [known, new])
        ).job.id

    with worker.database.read() as session:
        done, pending = get_job(session, tenant, answered), get_job(session, tenant, waiting)
        messages = session.scalars(select(OutboxMessage.payload)).all()
        assert done.job.status == "succeeded" and done.job.finished_at is not None
        assert [item.status for item in done.items] == ["succeeded", "succeeded"]
        assert pending.job.status == "queued" and pending.job.finished_at is None
    # Only the job with an uncached input asked for a worker.
    assert str(answered) not in str(messages) and str(waiting) in str(messages)
