"""Jobs of several tasks (`"tasks": [...]`): a parent job and one child job per task, on the
migrated SQLite and a fresh PostgreSQL database. The models are fakes (no torch): what is under
test is the job layer: what is written, what each task's workers get, how the parent ends,
reads, cancels, caches, counts against the quota, and is shown on HTTP.
tests/integration/test_more_tasks.py runs a multi-task job through real workers and models."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from core.db.models import Job, JobItem, WebhookDelivery
from core.db.session import Database
from core.errors import QuotaExceeded
from core.inference import registry
from core.inference.engine import InferenceEngine
from core.jobs.cancel import cancel_job
from core.jobs.execute import Worker, run_items
from core.jobs.presenters import job_out
from core.jobs.queries import get_job, list_jobs
from core.jobs.submit import JobRequest, Submitted, submit_job
from schemas.jobs import JobOut
from tests.unit.test_api_edge import edge_settings
from tests.unit.test_jobs_lifecycle import (
    Sent,
    claim,
    db,
    expire_leases,
    fake_tasks,
    item_ids,
    run_sweep,
    sent,
    settings,
    tenant,
)

__all__ = ["db", "fake_tasks", "sent"]  # fixtures shared with test_jobs_lifecycle

TASKS = ("fake", "fake-broken")


def submit_tasks(
    db: Database,
    tenant_id: int,
    texts: Sequence[str],
    tasks: Sequence[str] = TASKS,
    **options: Any,
) -> Submitted:
    with db.transaction() as session:
        return submit_job(
            session,
            settings(),
            tenant_id=tenant_id,
            request=JobRequest.of_tasks(tasks, list(texts), **options),
            idempotency_key=options.pop("key", None),
        )


def children(db: Database, parent_id: uuid.UUID) -> dict[str, SimpleNamespace]:
    """The parent's child jobs by task, as plain values read in one session."""
    with db.read() as session:
        rows = session.scalars(select(Job).where(Job.parent_id == parent_id))
        return {
            job.task: SimpleNamespace(
                id=job.id,
                total_items=job.total_items,
                webhook_url=job.webhook_url,
                status=job.status,
            )
            for job in rows
        }


def run_child(db: Database, job_id: uuid.UUID) -> None:
    """Run what was queued for one child job, as that task's worker does."""
    with db.read() as session:
        queued = list(
            session.scalars(
                select(JobItem.id).where(JobItem.job_id == job_id, JobItem.status == "queued")
            )
        )
    if queued:
        run_items(Worker(db, InferenceEngine("cpu"), settings(max_attempts=1)), job_id, queued)


def read(db: Database, tenant_id: int, job_id: uuid.UUID) -> JobOut:
    with db.read() as session:
        return job_out(get_job(session, tenant_id, job_id))


def test_a_parent_is_written_with_one_child_per_task_and_each_task_gets_its_own_message(
    db: Database, sent: list[Sent], fake_tasks: None
) -> None:
    tenant_id = tenant(db)
    parent = submit_tasks(db, tenant_id, ["good film", "bad film"]).job

    kids = children(db, parent.id)
    assert set(kids) == set(TASKS)
    assert all(k.total_items == 2 and k.webhook_url is None for k in kids.values())
    with db.read() as session:
        stored = session.get(Job, parent.id)
        assert stored is not None
        assert (stored.task, stored.tasks, stored.total_items) == ("fake,fake-broken", [*TASKS], 4)
        assert not list(session.scalars(select(JobItem).where(JobItem.job_id == parent.id)))
    assert sorted(m.job_id for m in sent) == sorted(str(k.id) for k in kids.values())


def test_the_parent_ends_when_its_last_child_ends_with_results_by_task_and_errors_by_task(
    db: Database, sent: list[Sent], fake_tasks: None
) -> None:
    tenant_id = tenant(db)
    parent = submit_tasks(
        db, tenant_id, ["good film", "bad film"], webhook_url="https://example.com/h"
    ).job
    kids = children(db, parent.id)

    run_child(db, kids["fake"].id)
    halfway = read(db, tenant_id, parent.id)
    assert halfway.status == "running"
    assert halfway.counts.succeeded == 2 and halfway.counts.pending == 2

    run_child(db, kids["fake-broken"].id)
    done = read(db, tenant_id, parent.id)
    assert done.status == "succeeded"  # one task failed everywhere, the other answered
    assert done.tasks == list(TASKS)
    assert [(r.index, sorted(r.tasks)) for r in done.results] == [(0, ["fake"]), (1, ["fake"])]
    assert [r.tasks["fake"].label for r in done.results] == ["positive", "negative"]
    assert {(e.index, e.task, e.status) for e in done.errors} == {
        (0, "fake-broken", "failed"),
        (1, "fake-broken", "failed"),
    }
    assert (done.counts.total, done.counts.succeeded, done.counts.failed) == (4, 2, 2)
    assert done.usage.inputs == 2  # the failed task's inputs got no result
    with db.read() as session:
        events = list(session.scalars(select(WebhookDelivery.job_id)))
    assert events == [parent.id]  # one event, the parent's, sent when the last child ended


def test_a_parent_whose_every_task_failed_is_failed_and_one_task_is_a_plain_job(
    db: Database, sent: list[Sent], fake_tasks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.TASKS, "fake-broken-2", registry.TASKS["fake-broken"])
    tenant_id = tenant(db)
    parent = submit_tasks(db, tenant_id, ["x"], tasks=["fake-broken", "fake-broken-2"]).job
    for child in children(db, parent.id).values():
        run_child(db, child.id)
    out = read(db, tenant_id, parent.id)
    assert out.status == "failed" and out.results == [] and len(out.errors) == 2

    plain = submit_tasks(db, tenant_id, ["x"], tasks=["fake"]).job
    assert plain.tasks is None and plain.task == "fake"  # as written, nothing read back


def test_a_repeated_multi_task_job_is_answered_from_each_tasks_cache(
    db: Database, sent: list[Sent], fake_tasks: None
) -> None:
    tenant_id = tenant(db)
    first = submit_tasks(db, tenant_id, ["good film"], tasks=["fake", "sentiment"]).job
    run_child(db, children(db, first.id)["fake"].id)

    again = submit_tasks(db, tenant_id, ["good film", "good film"], tasks=["fake", "sentiment"])
    view = job_out(again.written) if again.written is not None else None
    assert view is not None
    fake_results = [r.tasks.get("fake") for r in view.results]
    assert all(r is not None and r.cached for r in fake_results)


def test_cancelling_the_parent_cancels_every_child_and_a_child_alone_is_not_found(
    db: Database, sent: list[Sent], fake_tasks: None
) -> None:
    tenant_id = tenant(db)
    parent = submit_tasks(db, tenant_id, ["good film"]).job
    kids = children(db, parent.id)
    with db.transaction() as session, pytest.raises(Exception, match="not found"):
        cancel_job(session, tenant_id, kids["fake"].id)
    with db.transaction() as session, pytest.raises(Exception, match="not found"):
        cancel_job(session, tenant(db, "other"), parent.id)  # another tenant's: nothing changes
    assert {k.status for k in children(db, parent.id).values()} == {"queued"}

    with db.transaction() as session:
        cancel_job(session, tenant_id, parent.id)
    assert {k.status for k in children(db, parent.id).values()} == {"cancelled"}
    out = read(db, tenant_id, parent.id)
    assert out.status == "cancelled" and out.counts.cancelled == 2
    with db.read() as session:
        listed = [job.id for job in list_jobs(session, tenant_id)[0]]
    assert listed == [parent.id]  # children stay internal


def test_the_quota_counts_each_input_once_per_task(
    db: Database, sent: list[Sent], fake_tasks: None
) -> None:
    tenant_id = tenant(db)
    with db.transaction() as session:
        submit_job(
            session, settings(), tenant_id=tenant_id,
            request=JobRequest.of_tasks(TASKS, ["a", "b"]), max_pending_inputs=4,
        )  # fmt: skip
    with db.transaction() as session, pytest.raises(QuotaExceeded):
        # 4 pending (2 inputs x 2 tasks, the parent not counted again): one more is too many.
        submit_job(
            session, settings(), tenant_id=tenant_id,
            request=JobRequest("fake", ["c"]), max_pending_inputs=4,
        )  # fmt: skip


@pytest.fixture
def client(sqlite_db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(edge_settings(sqlite_db)), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"task": "sentiment", "tasks": ["langid"], "inputs": ["x"]}, "exactly one"),
        ({"inputs": ["x"]}, "exactly one"),
        ({"tasks": ["sentiment", "sentiment"], "inputs": ["x"]}, "twice"),
        ({"tasks": [], "inputs": ["x"]}, "at least 1"),
        ({"tasks": ["sentiment", "nope"], "inputs": ["x"]}, "nope"),
        ({"tasks": ["sentiment", 3], "inputs": ["x"]}, "string"),
    ],
)
def test_bad_task_lists_are_a_422_problem(
    client: TestClient, body: dict[str, Any], detail: str
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.text


def test_a_multi_task_job_over_http_is_accepted_and_read_back_by_task(client: TestClient) -> None:
    created = client.post("/v1/jobs", json={"tasks": ["sentiment", "langid"], "inputs": ["hi"]})
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["tasks"] == ["sentiment", "langid"] and body["task"] == "sentiment,langid"
    assert body["counts"]["total"] == 2
    again = client.get(created.headers["location"]).json()
    assert again["id"] == body["id"] and again["status"] in ("queued", "running", "succeeded")


def test_get_models_lists_each_tasks_labels_and_output_fields(client: TestClient) -> None:
    models = {m["task"]: m for m in client.get("/v1/models").json()["data"]}

    assert models["topic"]["labels"] == ["world", "sports", "business", "sci_tech"]
    assert models["sentiment"]["labels"] == ["negative", "positive"]
    assert models["topic"]["outputs"] == models["langid"]["outputs"] == ["label", "score", "scores"]
    assert (models["ner"]["outputs"], models["embed"]["outputs"]) == (["entities"], ["embedding"])
    assert "PERSON" in models["ner"]["labels"] and "de" in models["langid"]["labels"]
    assert [t["tier"] for t in models["topic"]["chain"]] == ["primary", "fallback"]


def test_a_sweep_that_gives_up_on_the_last_child_ends_the_parent(
    db: Database, sent: list[Sent], fake_tasks: None
) -> None:
    tenant_id = tenant(db)
    parent = submit_tasks(db, tenant_id, ["good film"]).job
    kids = children(db, parent.id)
    run_child(db, kids["fake"].id)
    broken = kids["fake-broken"].id
    claim(db, broken, item_ids(db, broken), max_attempts=1)  # a worker took it, then died
    expire_leases(db, broken)

    assert run_sweep(db, settings(max_attempts=1)) == (0, 1)
    out = read(db, tenant_id, parent.id)
    assert out.status == "succeeded"  # ended by the sweep, in its transaction
    assert [(e.task, e.status) for e in out.errors] == [("fake-broken", "failed")]
