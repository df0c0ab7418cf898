"""inferq_webhook_deliveries_total: what each attempt left a delivery in, counted after commit.

As tests/unit/test_webhooks.py: a real database (migrated SQLite and a fresh PostgreSQL), a real
HTTP receiver on loopback, fake models, task messages recorded instead of sent."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from core.db.models import WebhookDelivery, utcnow
from core.db.session import Database
from core.webhooks import deliveries, send
from tests.receiver import Receiver
from tests.unit import test_webhooks
from tests.unit.test_jobs_lifecycle import fake_tasks  # noqa: F401
from tests.unit.test_webhooks import _make_due, config, delivery, finished_job

# The fixtures of test_webhooks.py: both databases, the receiver, the recorded task messages.
db = test_webhooks.db
receiver = test_webhooks.receiver
asked = test_webhooks.asked

pytestmark = pytest.mark.usefixtures("fake_tasks")

OUTCOMES = ("delivered", "retrying", "failed")


def counted() -> dict[str, float]:
    return {
        outcome: REGISTRY.get_sample_value("inferq_webhook_deliveries_total", {"outcome": outcome})
        or 0.0
        for outcome in OUTCOMES
    }


def since(before: dict[str, float]) -> dict[str, float]:
    now = counted()
    return {outcome: now[outcome] - before[outcome] for outcome in OUTCOMES}


def test_a_delivered_event_counts_once_as_delivered(
    db: Database, receiver: Receiver, tmp_path: Path
) -> None:
    row = delivery(db, finished_job(db, receiver.url))
    before = counted()

    assert send.deliver(db, config(tmp_path), row.id) == "delivered"

    assert since(before) == {"delivered": 1.0, "retrying": 0.0, "failed": 0.0}


def test_each_failed_attempt_with_one_left_is_retrying_and_the_last_is_failed(
    db: Database, receiver: Receiver, tmp_path: Path
) -> None:
    settings = config(tmp_path)  # three attempts: 0, 5 and 300 s
    receiver.answer = 500
    row = delivery(db, finished_job(db, receiver.url))
    before = counted()

    assert send.deliver(db, settings, row.id) == "failing"
    assert since(before) == {"delivered": 0.0, "retrying": 1.0, "failed": 0.0}
    for expected in ("failing", "failed"):
        _make_due(db, row.id)
        assert send.deliver(db, settings, row.id) == expected

    assert since(before) == {"delivered": 0.0, "retrying": 2.0, "failed": 1.0}


def test_a_receiver_that_answers_410_fails_the_delivery_at_once(
    db: Database, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.answer = 410
    row = delivery(db, finished_job(db, receiver.url))
    before = counted()

    assert send.deliver(db, config(tmp_path), row.id) == "failed"

    assert since(before) == {"delivered": 0.0, "retrying": 0.0, "failed": 1.0}


def test_an_attempt_whose_lease_was_taken_over_counts_nothing(
    db: Database, receiver: Receiver, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    row = delivery(db, finished_job(db, receiver.url))
    with db.transaction() as session:
        stale = deliveries.claim(session, settings, row.id)
    assert stale is not None
    before = counted()

    with db.transaction() as session:
        session.execute(update(WebhookDelivery).values(lease_token="another attempt's"))
    with db.transaction() as session:
        late = deliveries.record(session, settings, stale, deliveries.Outcome(200))

    assert late is None
    assert since(before) == {"delivered": 0.0, "retrying": 0.0, "failed": 0.0}


def test_an_outcome_whose_transaction_rolls_back_is_not_counted(
    db: Database, receiver: Receiver, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    row = delivery(db, finished_job(db, receiver.url))
    with db.transaction() as session:
        attempt = deliveries.claim(session, settings, row.id)
    assert attempt is not None
    before = counted()

    with pytest.raises(RuntimeError), db.transaction() as session:
        deliveries.record(session, settings, attempt, deliveries.Outcome(200))
        raise RuntimeError("the database went away before the commit")

    assert since(before) == {"delivered": 0.0, "retrying": 0.0, "failed": 0.0}
    assert delivery(db, row.job_id).status == "pending"  # type: ignore[arg-type]


def test_a_delivery_whose_last_attempt_died_with_its_worker_counts_as_failed(
    db: Database, tmp_path: Path
) -> None:
    settings = config(tmp_path)
    row = delivery(db, finished_job(db, "http://hooks.test:9/h"))
    with db.transaction() as session:  # the last of three attempts was claimed, then lost
        session.execute(
            update(WebhookDelivery).values(
                attempts=3, status="failing", next_attempt_at=utcnow() - timedelta(seconds=1)
            )
        )
    before = counted()

    with db.transaction() as session:
        assert deliveries.claim(session, settings, row.id) is None

    assert delivery(db, row.job_id).status == "failed"  # type: ignore[arg-type]
    assert since(before) == {"delivered": 0.0, "retrying": 0.0, "failed": 1.0}
