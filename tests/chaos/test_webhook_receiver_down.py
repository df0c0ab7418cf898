"""Scenario 4: the webhook receiver is down — connection refused, then answering 500 — for the
first attempts of every event, on a compressed retry schedule, then comes up. Every event must
be delivered, each webhook-id must be answered 2xx exactly once, and every request must carry
a valid signature. Real processes (API, model worker, webhook sender, beat) on their own
PostgreSQL and Redis; a real HTTP receiver on loopback."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from core.db.models import WebhookDelivery
from core.db.session import Database
from tests.chaos.scale import record_figures, scaled
from tests.receiver import Receiver
from tests.services import wait_for

pytestmark = pytest.mark.chaos

SCHEDULE = "0,1,1,2,2,2,3,3,3,3,3,3"  # seconds: the Svix shape, compressed


def _deliveries(database: Database) -> list[WebhookDelivery]:
    with database.transaction() as session:
        return list(session.scalars(select(WebhookDelivery)))


@pytest.mark.timeout(600)
def test_a_receiver_down_for_the_first_attempts_gets_every_event_once(
    chaos_stack: object,
) -> None:
    jobs = scaled(ci=40, full=400)
    refused_seconds = scaled(ci=4, full=8)
    errors_to_answer = scaled(ci=60, full=600)
    stack, pg_url = chaos_stack(  # type: ignore[operator]
        INFERQ_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        INFERQ_WEBHOOK_RETRY_SCHEDULE=SCHEDULE,
        INFERQ_WEBHOOK_DISPATCH_INTERVAL_SECONDS="0.5",
        INFERQ_WEBHOOK_REDISPATCH_AFTER_SECONDS="5",
    )
    key = stack.run("keys", "create", "hooks")
    api = stack.start_api()
    stack.start("beat", "beat")
    stack.start("webhooks", "worker", "--queues", "webhooks")
    wait_for(lambda: "ready" in stack.log("webhooks"), 60, "the webhook sender", stack, "webhooks")
    stack.start_worker()

    receiver = Receiver()  # not listening yet: every attempt is refused
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api, headers=headers, timeout=60) as client:
        secret = client.get("/v1/webhooks/secret").json()["secret"]
        for n in range(jobs):
            created = client.post(
                "/v1/jobs",
                json={
                    "task": "sentiment",
                    "inputs": [f"event {n}: a {uuid.uuid4().hex[:8]} film, warm and witty ."],
                    "webhook_url": receiver.url,
                    "priority": "bulk" if n % 2 else "interactive",
                },
            )
            assert created.status_code == 202, created.text
    database = Database(pg_url)
    wait_for(
        lambda: len(_deliveries(database)) == jobs, 180, "every job to finish", stack, "worker"
    )
    time.sleep(refused_seconds)

    answered_errors = 0

    def answer(_headers: dict[str, str]) -> int:
        nonlocal answered_errors
        if answered_errors < errors_to_answer:
            answered_errors += 1
            return 500
        return 200

    receiver.answer = answer
    receiver.start()
    up_at = time.monotonic()
    try:
        wait_for(
            lambda: all(row.status == "delivered" for row in _deliveries(database)),
            300,
            "every event to be delivered",
            stack,
            "webhooks",
        )
        recovered_seconds = time.monotonic() - up_at
        time.sleep(2)  # anything sent twice would arrive now
        requests = receiver.requests()
    finally:
        receiver.stop()

    rows = _deliveries(database)
    event_ids = {row.event_id for row in rows}
    ok = [r.headers["webhook-id"] for r in requests if r.answered == 200]
    for request in requests:  # raises on any bad signature
        Webhook(secret).verify(request.body, request.headers)
    attempts = sum(row.attempts for row in rows)
    record_figures(
        "webhook_receiver_down",
        events=jobs,
        refused_attempts=attempts - len(requests),
        answered_500=answered_errors,
        answered_200=len(ok),
        attempts=attempts,
        delivered=sum(row.status == "delivered" for row in rows),
        duplicated=len(ok) - len(set(ok)),
        lost=len(event_ids - set(ok)),
        seconds_to_recover=round(recovered_seconds, 1),
    )
    assert set(ok) == event_ids
    assert len(ok) == len(set(ok)), "an event was answered 2xx more than once"
    assert attempts - len(requests) >= jobs, "every event met the refusing receiver first"
    assert answered_errors == errors_to_answer
    database.dispose()
