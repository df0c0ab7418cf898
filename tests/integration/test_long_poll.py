"""Long-polls end when the job finishes: PostgreSQL NOTIFY from the finishing transaction, sent
only at its commit, wakes the waiting request. Real PostgreSQL; the app runs in process (its
lifespan starts the LISTEN connection); no broker: outbox sends are dropped."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.routes import jobs as job_routes
from core.config import Settings
from core.db.models import JobItem
from core.db.session import Database
from core.inference.engine import Output
from core.inference.types import Prediction
from core.jobs.finished import CHANNEL
from core.jobs.lifecycle import claim_items, record_results
from core.jobs.submit import JobRequest, submit_job
from core.security.keys import local_tenant_id

pytestmark = pytest.mark.integration

WAIT_SECONDS = 20.0


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.jobs.outbox.send_run_items", lambda *_a, **_k: None)


def queued_job(db: Database, texts: Sequence[str] = ("a fine film",)) -> uuid.UUID:
    with db.transaction() as session:
        tenant_id = local_tenant_id(session)
        request = JobRequest("sentiment", list(texts), "interactive")
        return submit_job(session, Settings(), tenant_id=tenant_id, request=request).job.id


def finish(db: Database, job_id: uuid.UUID, *, commit: bool = True) -> None:
    """Play the worker: claim every item and record a result, which settles the job."""
    output = Output(Prediction("positive", 0.9), "test-model", "t-1", "primary", degraded=False)
    with db.sessions() as session, session.begin():
        ids = list(session.scalars(select(JobItem.id).where(JobItem.job_id == job_id)))
        claim = claim_items(session, job_id, ids, lease_seconds=60, max_attempts=3)
        assert claim is not None
        record_results(session, job_id, [(item, output) for item in claim.items])
        if not commit:
            session.rollback()


def announcements(pg_url: str, run: Any) -> list[str]:
    """Job ids announced on the channel while ``run()`` runs (and half a second after)."""
    conninfo = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        run()
        return [note.payload for note in listener.notifies(timeout=0.5)]


def test_a_finished_job_is_announced_at_commit_and_never_on_rollback(
    pg_db: Database, pg_url: str
) -> None:
    job_id = queued_job(pg_db)

    assert announcements(pg_url, lambda: finish(pg_db, job_id, commit=False)) == []
    assert announcements(pg_url, lambda: finish(pg_db, job_id)) == [str(job_id)]


def test_long_poll_answers_when_the_job_finishes_not_at_its_next_poll(
    pg_db: Database, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the safety-net poll far beyond the wait, only the announcement can end it early.
    monkeypatch.setattr(job_routes, "POLL_LISTENING_SECONDS", 60.0)
    job_id = queued_job(pg_db)
    app = create_app(Settings(database_url=pg_url, require_api_keys=False))
    answer: dict[str, Any] = {}

    with TestClient(app) as client:
        finished_jobs = app.state.finished_jobs
        assert until(lambda: finished_jobs.listening), "the API never started listening"

        def long_poll() -> None:
            response = client.get(f"/v1/jobs/{job_id}", params={"wait": WAIT_SECONDS})
            answer["response"], answer["at"] = response, time.monotonic()

        waiter = threading.Thread(target=long_poll)
        waiter.start()
        assert until(lambda: finished_jobs.watching(job_id) == 1), "the request never waited"
        finished_at = time.monotonic()
        finish(pg_db, job_id)
        waiter.join(WAIT_SECONDS + 10)

    response: httpx.Response = answer["response"]
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    # Woken, not timed out: without the announcement it would have answered at WAIT_SECONDS.
    assert answer["at"] - finished_at < WAIT_SECONDS / 2
    assert finished_jobs.watching(job_id) == 0


def until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def latest_job_id(db: Database) -> uuid.UUID | None:
    with db.read() as session:
        return session.scalar(select(JobItem.job_id).order_by(JobItem.id.desc()).limit(1))


def test_prefer_wait_answers_201_with_the_results_once_the_job_finishes(
    pg_db: Database, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One request instead of a submit and a poll: the submit holds its answer for the result.
    monkeypatch.setattr(job_routes, "POLL_LISTENING_SECONDS", 60.0)
    app = create_app(Settings(database_url=pg_url, require_api_keys=False))
    answer: dict[str, Any] = {}
    body = {"task": "sentiment", "inputs": ["a fine film"]}

    with TestClient(app) as client:
        finished_jobs = app.state.finished_jobs
        assert until(lambda: finished_jobs.listening), "the API never started listening"

        def submit() -> None:
            answer["response"] = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=20"})

        waiter = threading.Thread(target=submit)
        waiter.start()
        assert until(
            lambda: (job := latest_job_id(pg_db)) is not None and bool(finished_jobs.watching(job))
        ), "the submit never waited"
        job_id = latest_job_id(pg_db)
        assert job_id is not None
        finish(pg_db, job_id)
        waiter.join(WAIT_SECONDS + 10)

    response: httpx.Response = answer["response"]
    assert response.status_code == 201
    assert response.headers["Preference-Applied"] == "wait=20"
    assert response.headers["Location"] == f"/v1/jobs/{job_id}"
    job = response.json()
    assert job["status"] == "succeeded"
    assert [result["label"] for result in job["results"]] == ["positive"]


@pytest.mark.usefixtures("pg_db")  # migrates the database
def test_prefer_wait_answers_the_usual_202_when_the_job_is_not_done_in_time(pg_url: str) -> None:
    app = create_app(Settings(database_url=pg_url, require_api_keys=False))
    body = {"task": "sentiment", "inputs": ["a fine film"]}
    with TestClient(app) as client:
        started = time.monotonic()
        response = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=0.5"})
        waited = time.monotonic() - started
        plain = client.post("/v1/jobs", json=body | {"inputs": ["another"]})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=0.5"
    assert waited >= 0.5
    # Without the header nothing waits and nothing is said about preferences.
    assert plain.status_code == 202
    assert "Preference-Applied" not in plain.headers


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("wait=5", 5.0),
        ("respond-async, wait=10", 10.0),
        ("wait=10; foo=bar", 10.0),
        ('WAIT="2.5"', 2.5),
        ("wait=999", 30.0),  # capped at INFERQ_MAX_WAIT_SECONDS
        ("wait=abc", None),
        ("wait=-1", None),
        ("wait=nan", None),
        ("handling=lenient", None),
        (None, None),
    ],
)
def test_prefer_header_is_read_as_rfc_7240_says(header: str | None, expected: float | None) -> None:
    assert job_routes.preferred_wait(header, 30.0) == expected
