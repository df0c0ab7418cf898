"""Webhook events and their delivery in core: the outbox row, signing, attempts, the schedule.

Real database (migrated SQLite, and a fresh PostgreSQL database), a real HTTP receiver on
loopback (tests/receiver.py), fake models. No broker: the task messages a commit would send are
recorded instead, so a test sees exactly which deliveries would be asked for, and when.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from standardwebhooks import Webhook

from core.config import Settings
from core.db.models import WebhookDelivery, WebhookSecret, utcnow
from core.db.session import Database
from core.errors import InvalidTransition, NotConfigured
from core.inference.engine import InferenceEngine
from core.jobs.cancel import cancel_job
from core.jobs.execute import Worker, run_items
from core.jobs.queries import get_job
from core.webhooks import deliveries, send
from core.webhooks.signing import (
    SecretBox,
    current_secret,
    rotate_secret,
    signing_secrets,
)
from tests.receiver import Receiver
from tests.unit.test_jobs_lifecycle import fake_tasks, item_ids, submit, tenant  # noqa: F401

pytestmark = pytest.mark.usefixtures("fake_tasks")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Database:
    database: Database = request.getfixturevalue(
        "sqlite_db" if request.param == "sqlite" else "pg_db"
    )
    return database


@pytest.fixture(autouse=True)
def asked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Delivery ids whose task message a commit sent, in order."""
    messages: list[int] = []
    monkeypatch.setattr(
        "core.webhooks.deliveries.send_delivery",
        lambda _app, delivery_id: messages.append(delivery_id),
    )
    return messages


@pytest.fixture
def receiver() -> Any:
    server = Receiver().start()
    yield server
    server.stop()


def config(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "secret_key": "test-secret-key",
        "webhook_allowed_networks": "127.0.0.0/8",
        "webhook_retry_schedule": "0,5,300",
        "data_dir": tmp_path,
        **overrides,
    }
    return Settings(**values)


def finished_job(db: Database, url: str, *, inputs: tuple[str, ...] = ("good", "bad")) -> uuid.UUID:
    """A job of the fake task with a webhook, run to success by a worker with no broker."""
    tenant_id = tenant(db)
    allowing = Settings(webhook_allowed_networks="127.0.0.0/8")
    job_id = submit(db, tenant_id, inputs, task="fake", webhook_url=url, config=allowing).job.id
    worker = Worker(db, InferenceEngine("cpu"), Settings())
    run_items(worker, job_id, item_ids(db, job_id))
    return job_id


def delivery(db: Database, job_id: uuid.UUID) -> WebhookDelivery:
    with db.transaction() as session:  # commits, so the row stays readable afterwards
        row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        assert row is not None
        return row


# --- the event row ------------------------------------------------------------------------------


def test_a_finished_job_gets_one_event_asked_for_after_commit(
    db: Database, asked: list[int]
) -> None:
    tenant_id = tenant(db)
    job_id = submit(db, tenant_id, ("good",), task="fake", webhook_url="http://hooks.test/h").job.id
    with db.read() as session:
        assert session.scalar(select(WebhookDelivery)) is None  # nothing while it runs
    worker = Worker(db, InferenceEngine("cpu"), Settings())
    run_items(worker, job_id, item_ids(db, job_id))
    row = delivery(db, job_id)
    assert (row.event_type, row.status, row.attempts) == ("job.completed", "pending", 0)
    assert row.event_id.startswith("msg_")
    assert asked == [row.id]


def test_no_event_is_asked_for_when_the_finishing_transaction_rolls_back(
    db: Database, asked: list[int]
) -> None:
    tenant_id = tenant(db)
    job_id = submit(db, tenant_id, ("good",), task="fake", webhook_url="http://hooks.test/h").job.id
    with pytest.raises(RuntimeError), db.transaction() as session:
        cancel_job(session, tenant_id, job_id)
        raise RuntimeError("the transaction fails after the job was cancelled")
    with db.read() as session:
        assert session.scalar(select(WebhookDelivery)) is None
    assert asked == []


def test_a_cancelled_job_gets_a_cancelled_event(db: Database, asked: list[int]) -> None:
    tenant_id = tenant(db)
    job_id = submit(db, tenant_id, ("good",), task="fake", webhook_url="http://hooks.test/h").job.id
    with db.transaction() as session:
        cancel_job(session, tenant_id, job_id)
    assert delivery(db, job_id).event_type == "job.cancelled"
    assert len(asked) == 1


def test_jobs_without_a_webhook_get_no_event(db: Database, asked: list[int]) -> None:
    tenant_id = tenant(db)
    job_id = submit(db, tenant_id, ("good",), task="fake").job.id
    with db.transaction() as session:
        cancel_job(session, tenant_id, job_id)
    with db.read() as session:
        assert session.scalar(select(WebhookDelivery)) is None
        assert get_job(session, tenant_id, job_id).webhook is None
    assert asked == []


# --- delivering ---------------------------------------------------------------------------------


def test_a_delivery_is_signed_and_verifies_with_the_tenants_secret(
    db: Database, receiver: Receiver, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    job_id = finished_job(db, receiver.url)
    row = delivery(db, job_id)
    assert send.deliver(db, settings, row.id) == "delivered"
    (got,) = receiver.requests()
    with db.transaction() as session:
        secret = current_secret(session, SecretBox.from_settings(settings), row.tenant_id)
    event = Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "job.completed"
    assert event["data"]["id"] == str(job_id)
    assert [r["label"] for r in event["data"]["results"]] == ["positive", "negative"]
    assert got.headers["webhook-id"] == row.event_id
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("inferq-webhooks/")
    with db.read() as session:
        state = get_job(session, row.tenant_id, job_id).webhook
    assert state is not None
    assert (state.status, state.attempts, state.last_status_code) == ("delivered", 1, 200)
    assert state.delivered_at is not None and state.next_attempt_at is None


def test_failures_follow_the_schedule_then_fail(
    db: Database, receiver: Receiver, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    receiver.answer = 500
    row = delivery(db, finished_job(db, receiver.url))
    before = utcnow()
    assert send.deliver(db, settings, row.id) == "failing"
    after_first = delivery(db, row.job_id)  # type: ignore[arg-type]
    assert after_first.last_status_code == 500 and after_first.last_error == "HTTP 500"
    assert after_first.next_attempt_at is not None
    wait = (after_first.next_attempt_at - before).total_seconds()
    assert 4.5 - 0.1 <= wait <= 5.5 + 1  # 5 s, ±10 % jitter
    assert send.deliver(db, settings, row.id) is None  # not due yet: nothing is sent
    assert len(receiver.requests()) == 1
    for expected in ("failing", "failed"):
        _make_due(db, row.id)
        assert send.deliver(db, settings, row.id) == expected
    final = delivery(db, row.job_id)  # type: ignore[arg-type]
    assert final.attempts == 3 and final.next_attempt_at is None
    assert final.last_error == "gave up after 3 attempts; last: HTTP 500"
    assert len({r.headers["webhook-id"] for r in receiver.requests()}) == 1


def _make_due(db: Database, delivery_id: int) -> None:
    with db.transaction() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        (410, "failed", "410 Gone"),
        (302, "failing", "redirects are not followed"),
        (204, "delivered", None),
        (429, "failing", "HTTP 429"),
    ],
)
def test_answers_are_judged_by_status_code(
    db: Database, receiver: Receiver, tmp_path: Path, code: int, status: str, error: str | None
) -> None:
    receiver.answer = code
    receiver.extra_headers = {"location": f"http://127.0.0.1:{receiver.port}/elsewhere"}
    row = delivery(db, finished_job(db, receiver.url))
    assert send.deliver(db, config(tmp_path), row.id) == status
    after = delivery(db, row.job_id)  # type: ignore[arg-type]
    assert after.last_status_code == code
    assert (error or "") in (after.last_error or "")
    assert [r.path for r in receiver.requests()] == ["/hook"]  # a redirect is never followed


def test_a_blocked_address_fails_at_once_saying_which_and_why(db: Database, tmp_path: Path) -> None:
    row = delivery(db, finished_job(db, "http://localhost:9/hook"))
    assert send.deliver(db, config(tmp_path, webhook_allowed_networks=""), row.id) == "failed"
    after = delivery(db, row.job_id)  # type: ignore[arg-type]
    assert after.attempts == 1
    assert "localhost resolves to address" in (after.last_error or "")
    assert "loopback" in (after.last_error or "")


def test_a_slow_receiver_is_a_timeout(db: Database, receiver: Receiver, tmp_path: Path) -> None:
    receiver.delay_seconds = 2
    row = delivery(db, finished_job(db, receiver.url))
    assert send.deliver(db, config(tmp_path, webhook_timeout_seconds=0.5), row.id) == "failing"
    assert delivery(db, row.job_id).last_error == "no answer within 0.5 s"  # type: ignore[arg-type]


def test_only_the_first_bytes_of_a_huge_answer_are_read(
    db: Database, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.response_body = b"x" * 5_000_000
    row = delivery(db, finished_job(db, receiver.url))
    assert send.deliver(db, config(tmp_path), row.id) == "delivered"


def test_many_results_become_a_link(db: Database, receiver: Receiver, tmp_path: Path) -> None:
    settings = config(tmp_path, webhook_max_results=1, public_url="https://inferq.example")
    job_id = finished_job(db, receiver.url)
    send.deliver(db, settings, delivery(db, job_id).id)
    data = json.loads(receiver.requests()[0].body)["data"]
    assert data["results"] == [] and data["results_truncated"] is True
    assert data["results_url"] == f"https://inferq.example/v1/jobs/{job_id}"
    assert data["counts"]["succeeded"] == 2


def test_an_attempt_whose_lease_was_taken_over_records_nothing(
    db: Database, receiver: Receiver, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    row = delivery(db, finished_job(db, receiver.url))
    with db.transaction() as session:
        stale = deliveries.claim(session, settings, row.id)
    assert stale is not None
    with db.transaction() as session:  # its worker died; the lease ran out; another took it
        session.execute(
            update(WebhookDelivery).values(leased_until=utcnow() - timedelta(seconds=1))
        )
    assert send.deliver(db, settings, row.id) == "delivered"
    with db.transaction() as session:
        late = deliveries.record(session, settings, stale, deliveries.Outcome(500, "HTTP 500"))
    assert late is None
    assert delivery(db, row.job_id).status == "delivered"  # type: ignore[arg-type]


def test_the_dispatcher_sends_what_is_due_lost_or_abandoned(
    db: Database, tmp_path: Path, asked: list[int]
) -> None:
    settings = config(tmp_path, webhook_redispatch_after_seconds=60)
    row = delivery(db, finished_job(db, "http://hooks.test:9/h"))
    asked.clear()
    with db.transaction() as session:  # just asked for at commit: not again yet
        assert deliveries.dispatch_due(session, settings) == 0
    with db.transaction() as session:  # its message was lost with Redis a while ago
        session.execute(
            update(WebhookDelivery).values(dispatched_at=utcnow() - timedelta(seconds=61))
        )
    with db.transaction() as session:
        assert deliveries.dispatch_due(session, settings) == 1
    assert asked == [row.id]
    with db.transaction() as session:
        assert deliveries.claim(session, settings, row.id) is not None
    with db.transaction() as session:  # in flight under a live lease: left alone
        assert deliveries.dispatch_due(session, settings) == 0
    with db.transaction() as session:  # the worker died mid-attempt: its lease runs out
        session.execute(
            update(WebhookDelivery).values(leased_until=utcnow() - timedelta(seconds=1))
        )
    with db.transaction() as session:
        assert deliveries.dispatch_due(session, settings) == 1


def test_redeliver_starts_a_new_series_with_the_same_webhook_id(
    db: Database, receiver: Receiver, tmp_path: Path, asked: list[int]
) -> None:
    settings = config(tmp_path)
    job_id = finished_job(db, receiver.url)
    row = delivery(db, job_id)
    send.deliver(db, settings, row.id)
    with db.transaction() as session:
        again = deliveries.redeliver(session, row.tenant_id, job_id)
        assert (again.status, again.attempts) == ("pending", 0)
    assert asked[-1] == row.id
    assert send.deliver(db, settings, row.id) == "delivered"
    ids = [r.headers["webhook-id"] for r in receiver.requests()]
    assert ids == [row.event_id, row.event_id]


def test_redeliver_refuses_a_running_job_and_a_job_without_webhook(db: Database) -> None:
    tenant_id = tenant(db)
    running = submit(db, tenant_id, ("good",), task="fake", webhook_url="http://hooks.test/h")
    plain = submit(db, tenant_id, ("bad",), task="fake")
    with db.transaction() as session:
        cancel_job(session, tenant_id, plain.job.id)
    for job_id, says in (
        (running.job.id, "its event is sent when it finishes"),
        (plain.job.id, "no webhook_url"),
    ):
        with pytest.raises(InvalidTransition, match=says), db.transaction() as session:
            deliveries.redeliver(session, tenant_id, job_id)


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_are_standard_webhooks_secrets_stored_encrypted(
    db: Database, tmp_path: Path
) -> None:
    box = SecretBox.from_settings(config(tmp_path))
    tenant_id = tenant(db)
    with db.transaction() as session:
        secret = current_secret(session, box, tenant_id)
    with db.transaction() as session:
        assert current_secret(session, box, tenant_id) == secret  # made once
        stored = session.scalars(select(WebhookSecret.ciphertext)).all()
    assert secret.startswith("whsec_")
    assert len(__import__("base64").b64decode(secret.removeprefix("whsec_"))) >= 24
    assert len(stored) == 1 and secret not in stored[0] and "whsec_" not in stored[0]
    with pytest.raises(NotConfigured, match="INFERQ_SECRET_KEY differs"):
        SecretBox("another key").decrypt(stored[0], tenant_id)
    with pytest.raises(NotConfigured):  # bound to its tenant
        box.decrypt(stored[0], tenant_id + 1)


def test_after_a_rotation_both_secrets_sign_for_a_day(
    db: Database, receiver: Receiver, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    box = SecretBox.from_settings(settings)
    job_id = finished_job(db, receiver.url)
    row = delivery(db, job_id)
    with db.transaction() as session:
        old = current_secret(session, box, row.tenant_id)
        new = rotate_secret(session, box, row.tenant_id)
    assert old != new
    send.deliver(db, settings, row.id)
    got = receiver.requests()[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(got.body, got.headers)
    with db.transaction() as session:  # a day later only the new one signs
        session.execute(
            update(WebhookSecret)
            .where(WebhookSecret.retired_at.is_not(None))
            .values(retired_at=utcnow() - timedelta(hours=24, seconds=1))
        )
        assert signing_secrets(session, box, row.tenant_id) == [new]


def test_distributed_mode_needs_a_secret_key(tmp_path: Path) -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", data_dir=tmp_path)
    with pytest.raises(NotConfigured, match="INFERQ_SECRET_KEY is not set"):
        SecretBox.from_settings(settings)


def test_embedded_mode_keeps_a_generated_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    token = SecretBox.from_settings(settings).encrypt("whsec_x", 1)
    assert SecretBox.from_settings(settings).decrypt(token, 1) == "whsec_x"
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
