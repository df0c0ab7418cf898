"""Batches of several tasks (``POST /v1/batches?task=a,b``): a parent batch with no lines of its
own and one child batch per task, written from one reading of the upload, on the migrated SQLite
and a fresh PostgreSQL database. Fake models (no torch), the recorded outbox of
test_jobs_lifecycle, and the recorded messages run as a worker runs them. What is under test is
the batch layer: what is written, how results merge per line, how the parent ends, cancels and
expires, what the caller sees and does not see.
tests/integration/test_batches.py runs one through a real deployment."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.app import create_app
from core.config import Settings
from core.db.models import Batch, Job, JobItem, WebhookDelivery, utcnow
from core.db.session import Database
from core.errors import InvalidInput, InvalidTransition, NotFound, QuotaExceeded
from core.inference import registry
from core.inference.engine import InferenceEngine
from core.jobs import batch_results, batch_writer, batches
from core.jobs.batch_input import ndjson_lines
from core.jobs.execute import Delivery, Worker, run_batch
from core.jobs.sweeper import sweep
from tests.unit.test_api_edge import edge_settings
from tests.unit.test_batches import config, ndjson, read, results
from tests.unit.test_jobs_lifecycle import (
    Sent,
    claim,
    count,
    db,
    fake_tasks,
    record,
    sent,
    tenant,
)

__all__ = ["db", "fake_tasks", "sent"]  # fixtures shared with test_jobs_lifecycle

pytestmark = pytest.mark.usefixtures("fake_tasks")

TASKS = ("fake", "fake-broken")


@pytest.fixture(autouse=True)
def second_fake(monkeypatch: pytest.MonkeyPatch, fake_tasks: None) -> None:
    """A second working task, so that a line can succeed in both."""
    monkeypatch.setitem(registry.TASKS, "fake-2", registry.TASKS["fake"])


def settings(**overrides: Any) -> Settings:
    return config(**{"max_attempts": 1, **overrides})


def create(
    db: Database,
    tenant_id: int,
    body: Sequence[bytes],
    config: Settings,
    tasks: Sequence[str] = TASKS,
    **request: Any,
) -> uuid.UUID:
    max_pending = request.pop("max_pending", None)
    with db.transaction() as session:
        spec = batches.BatchRequest.of_tasks(tasks, **request)
        batch = batches.open_batch(session, config, tenant_id, spec)
        writer = batch_writer.batch_writer(session, config, batch, max_pending_inputs=max_pending)
        writer.add_all(ndjson_lines(iter(body), config))
        writer.finish()
        return batch.id


def kids(db: Database, parent_id: uuid.UUID) -> dict[str, Batch]:
    """The parent's child batches by task, detached."""
    with db.read() as session:
        found = list(session.scalars(select(Batch).where(Batch.parent_id == parent_id)))
        session.expunge_all()
    return {child.task: child for child in found}


def run_task(db: Database, sent: list[Sent], config: Settings, batch_id: uuid.UUID) -> None:
    """Run the messages sent for one child batch's jobs (another task's workers are idle)."""
    engine = InferenceEngine(device="cpu")
    for _ in range(100):
        with db.read() as session:
            mine = {str(j) for j in session.scalars(select(Job.id).where(Job.batch_id == batch_id))}
        message = next((m for m in sent if m.job_id in mine), None)
        if message is None:
            return
        sent.remove(message)
        delivery = Delivery(uuid.UUID(message.job_id), message.item_ids)
        run_batch(Worker(db, engine, config), [delivery])
    raise AssertionError("work did not drain")


def work(db: Database, sent: list[Sent], config: Settings) -> None:
    engine = InferenceEngine(device="cpu")
    while sent:
        message = sent.pop(0)
        delivery = Delivery(uuid.UUID(message.job_id), message.item_ids)
        run_batch(Worker(db, engine, config), [delivery])


def batch_out(db: Database, tenant_id: int, batch_id: uuid.UUID) -> Any:
    with db.read() as session:
        return batch_results.batch_out(batches.get_batch(session, tenant_id, batch_id))


def test_an_upload_of_two_tasks_is_a_parent_without_lines_and_a_batch_per_task_read_once(
    db: Database, sent: list[Sent]
) -> None:
    config = settings()
    body = ndjson([{"id": f"r{i}", "text": f"good film {i}"} for i in range(10)])
    reads: list[int] = []

    def once() -> Iterator[bytes]:  # a stream, as the request body is: it can be read once
        for chunk in body:
            reads.append(1)
            yield chunk

    tenant_id = tenant(db)
    with db.transaction() as session:
        spec = batches.BatchRequest.of_tasks(TASKS, webhook_url="https://example.com/h")
        parent = batches.open_batch(session, config, tenant_id, spec)
        writer = batch_writer.batch_writer(session, config, parent)
        writer.add_all(ndjson_lines(once(), config))
        writer.finish()
        parent_id = parent.id

    assert len(reads) == len(body)
    stored = read(db, parent_id)
    assert (stored.task, stored.tasks, stored.total, stored.status) == (
        "fake,fake-broken",
        [*TASKS],
        20,
        "in_progress",
    )
    assert count(db, JobItem, JobItem.batch_id == parent_id) == 0
    assert count(db, Job, Job.batch_id == parent_id) == 0
    children = kids(db, parent_id)
    assert set(children) == set(TASKS)
    for child in children.values():
        assert (child.total, child.webhook_url, child.idempotency_key) == (10, None, None)
        assert child.expires_at == stored.expires_at  # one window for all
        assert count(db, JobItem, JobItem.batch_id == child.id) == 10
    child_jobs = {str(job.id) for kid in children.values() for job in _jobs(db, kid.id)}
    assert {m.job_id for m in sent} <= child_jobs and sent


def _jobs(db: Database, batch_id: uuid.UUID) -> list[Job]:
    with db.read() as session:
        found = list(session.scalars(select(Job).where(Job.batch_id == batch_id)))
        session.expunge_all()
    return found


def test_results_merge_each_line_in_input_order_with_every_task_and_an_error_line(
    db: Database, sent: list[Sent]
) -> None:
    config = settings()
    tenant_id = tenant(db)
    body = ndjson(
        [
            {"id": "a", "text": "a good film"},
            b"{not json",
            {"id": "c", "text": "a bad film"},
            *({"id": f"n{i}", "text": f"good {i}"} for i in range(10)),
        ]
    )
    parent_id = create(db, tenant_id, body, config, tasks=("fake", "fake-2"))
    work(db, sent, config)

    lines = results(db, parent_id)
    assert [line["id"] for line in lines] == ["a", "2", "c", *(f"n{i}" for i in range(10))]
    assert all(list(line["tasks"]) == ["fake", "fake-2"] for line in lines)
    first = lines[0]["tasks"]
    assert first["fake"]["result"]["label"] == first["fake-2"]["result"]["label"] == "positive"
    assert lines[2]["tasks"]["fake"]["result"]["label"] == "negative"
    assert {
        task: (part["line"], part["error"]["code"]) for task, part in lines[1]["tasks"].items()
    } == {
        "fake": (2, "invalid_json"),
        "fake-2": (2, "invalid_json"),
    }
    errors = results(db, parent_id, only_errors=True)
    assert [line["id"] for line in errors] == ["2"]
    out = batch_out(db, tenant_id, parent_id)
    assert out.status == "completed" and out.tasks == ["fake", "fake-2"]
    assert (out.request_counts.total, out.request_counts.completed) == (26, 24)
    assert out.request_counts.failed == 2 and out.usage.inputs == 24


def test_a_line_shows_once_every_task_has_finished_it_and_one_failing_task_is_its_error(
    db: Database, sent: list[Sent]
) -> None:
    config = settings()
    tenant_id = tenant(db)
    body = ndjson([{"id": f"r{i}", "text": f"good {i}"} for i in range(6)])
    parent_id = create(db, tenant_id, body, config)
    run_task(db, sent, config, kids(db, parent_id)["fake"].id)
    assert results(db, parent_id) == []  # fake-broken has not run a line yet

    work(db, sent, config)
    lines = results(db, parent_id)
    assert [line["id"] for line in lines] == [f"r{i}" for i in range(6)]
    assert all("result" in line["tasks"]["fake"] for line in lines)
    assert all("error" in line["tasks"]["fake-broken"] for line in lines)
    assert len(results(db, parent_id, only_errors=True)) == 6  # an error in any task


def test_the_parent_ends_in_the_transaction_of_its_last_child_with_one_webhook_event(
    db: Database, sent: list[Sent]
) -> None:
    config = settings()
    tenant_id = tenant(db)
    body = ndjson([{"id": f"r{i}", "text": f"good {i}"} for i in range(6)])
    parent_id = create(
        db, tenant_id, body, config, tasks=("fake", "fake-2"), webhook_url="https://example.com/h"
    )
    children = kids(db, parent_id)

    run_task(db, sent, config, children["fake"].id)
    assert read(db, kids(db, parent_id)["fake"].id).status == "completed"
    halfway = batch_out(db, tenant_id, parent_id)
    assert halfway.status == "in_progress"
    assert (halfway.request_counts.completed, halfway.request_counts.pending) == (6, 6)
    assert count(db, WebhookDelivery) == 0

    run_task(db, sent, config, children["fake-2"].id)
    done = read(db, parent_id)
    assert done.status == "completed" and done.completed_at is not None
    with db.read() as session:
        events = list(session.execute(select(WebhookDelivery.batch_id, WebhookDelivery.event_type)))
    assert [batch_id for batch_id, _ in events] == [parent_id]  # one, the parent's
    assert batch_out(db, tenant_id, parent_id).request_counts.pending == 0


def test_a_parent_whose_every_task_failed_is_failed(db: Database, sent: list[Sent]) -> None:
    config = settings()
    tenant_id = tenant(db)
    parent_id = create(db, tenant_id, ndjson([{"text": ""}, {"id": 1}]), config)
    assert read(db, parent_id).status == "failed"  # every line refused: over at upload
    assert not sent


def test_cancelling_the_parent_cancels_every_task_and_keeps_what_ran(
    db: Database, sent: list[Sent]
) -> None:
    config = settings(batch_job_size=4, batch_jobs_in_flight=1)
    tenant_id = tenant(db)
    body = ndjson([{"text": f"good {i}"} for i in range(12)])
    parent_id = create(db, tenant_id, body, config, tasks=("fake", "fake-2"))
    first = sent.pop(0)
    run_batch(
        Worker(db, InferenceEngine("cpu"), config),
        [Delivery(uuid.UUID(first.job_id), first.item_ids)],
    )
    with db.transaction() as session:
        assert batches.cancel_batch(session, tenant_id, parent_id).status == "cancelled"
    assert {child.status for child in kids(db, parent_id).values()} == {"cancelled"}
    out = batch_out(db, tenant_id, parent_id)
    assert out.request_counts.model_dump() == {
        "total": 24,
        "completed": 4,
        "failed": 0,
        "pending": 0,
        "cancelled": 20,
    }
    work(db, sent, config)  # messages sent before the cancel find nothing to run
    assert batch_out(db, tenant_id, parent_id).request_counts.completed == 4
    with db.transaction() as session, pytest.raises(InvalidTransition):
        batches.cancel_batch(session, tenant_id, parent_id)


def test_a_parent_cancelled_while_a_line_runs_ends_when_that_line_does(
    db: Database, sent: list[Sent]
) -> None:
    config = settings(batch_job_size=4, batch_jobs_in_flight=1)
    tenant_id = tenant(db)
    body = ndjson([{"text": f"good {i}"} for i in range(4)])
    parent_id = create(
        db, tenant_id, body, config, tasks=("fake", "fake-2"), webhook_url="https://example.com/h"
    )
    first = sent.pop(0)
    running = claim(db, uuid.UUID(first.job_id), first.item_ids)
    assert len(running) == 4

    with db.transaction() as session:
        assert batches.cancel_batch(session, tenant_id, parent_id).status == "cancelling"
    assert sorted(child.status for child in kids(db, parent_id).values()) == [
        "cancelled",
        "cancelling",
    ]
    assert count(db, WebhookDelivery) == 0

    record(db, uuid.UUID(first.job_id), running)  # the running lines finish, keep their result
    assert read(db, parent_id).status == "cancelled"
    out = batch_out(db, tenant_id, parent_id)
    assert (out.request_counts.completed, out.request_counts.cancelled) == (4, 4)
    with db.read() as session:
        events = list(session.execute(select(WebhookDelivery.batch_id, WebhookDelivery.event_type)))
    assert events == [(parent_id, "batch.cancelled")]


def test_a_parent_past_its_window_expires_with_its_tasks_batches(
    db: Database, sent: list[Sent]
) -> None:
    config = settings(batch_job_size=4, batch_jobs_in_flight=1)
    tenant_id = tenant(db)
    parent_id = create(db, tenant_id, ndjson([{"text": f"t {i}"} for i in range(8)]), config)
    with db.transaction() as session:
        session.execute(update(Batch).values(expires_at=utcnow() - timedelta(seconds=1)))
    with db.transaction() as session:
        assert sweep(session, config).expired_batches == 2  # the tasks' batches
    assert read(db, parent_id).status == "expired"
    assert {child.status for child in kids(db, parent_id).values()} == {"expired"}


def test_a_tasks_batch_is_not_found_alone_and_not_listed(db: Database, sent: list[Sent]) -> None:
    config = settings()
    tenant_id = tenant(db)
    parent_id = create(db, tenant_id, ndjson([{"text": "good"}]), config)
    child_id = kids(db, parent_id)["fake"].id
    with db.read() as session, pytest.raises(NotFound):
        batches.get_batch(session, tenant_id, child_id)
    with db.transaction() as session, pytest.raises(NotFound):
        batches.cancel_batch(session, tenant_id, child_id)
    with db.read() as session:
        listed = [batch.id for batch in batches.list_batches(session, tenant_id)[0]]
    assert listed == [parent_id]


def test_the_quota_counts_each_line_once_per_task(db: Database, sent: list[Sent]) -> None:
    config = settings()
    tenant_id = tenant(db)
    lines = ndjson([{"text": "a"}, {"text": "b"}])
    create(db, tenant_id, lines, config, max_pending=4)
    with pytest.raises(QuotaExceeded):
        create(db, tenant_id, ndjson([{"text": "c"}]), config, tasks=("fake",), max_pending=4)


def test_bad_task_lists_are_refused_before_anything_is_written(db: Database) -> None:
    config = settings()
    tenant_id = tenant(db)
    with pytest.raises(InvalidInput, match="twice"):
        create(db, tenant_id, ndjson([{"text": "a"}]), config, tasks=("fake", "fake"))
    with pytest.raises(InvalidInput, match="nope"):
        create(db, tenant_id, ndjson([{"text": "a"}]), config, tasks=("fake", "nope"))
    assert count(db, Batch) == 0


# --- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def client(sqlite_db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(edge_settings(sqlite_db)), raise_server_exceptions=False) as client:
        yield client


NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.mark.parametrize(
    ("task", "detail"),
    [("fake,fake", "twice"), ("fake,nope", "nope"), ("fake,", "unknown task ''")],
)
def test_bad_task_lists_are_a_422_problem(client: TestClient, task: str, detail: str) -> None:
    response = client.post(
        "/v1/batches", params={"task": task}, headers=NDJSON, content=b'{"text": "x"}\n'
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.text


def test_a_batch_of_two_tasks_over_http_hides_its_tasks_batches(
    client: TestClient, sqlite_db: Database
) -> None:
    created = client.post(
        "/v1/batches",
        params={"task": "fake,fake-2"},
        headers=NDJSON,
        content=b'{"text": "good"}\n{"text": "bad"}\n',
    )
    assert created.status_code == 202, created.text
    body = created.json()
    assert (body["task"], body["tasks"]) == ("fake,fake-2", ["fake", "fake-2"])
    assert body["request_counts"]["total"] == 4
    listed = client.get("/v1/batches").json()["data"]
    assert [batch["id"] for batch in listed] == [body["id"]]
    with sqlite_db.read() as session:
        child_id = session.scalars(
            select(Batch.id).where(Batch.parent_id == uuid.UUID(body["id"]))
        ).first()
    for method, path in (
        ("GET", f"/v1/batches/{child_id}"),
        ("GET", f"/v1/batches/{child_id}/results"),
        ("POST", f"/v1/batches/{child_id}/cancel"),
    ):
        assert client.request(method, path).status_code == 404, path
    assert client.get(f"/v1/batches/{body['id']}").json()["tasks"] == ["fake", "fake-2"]
