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
# Deliveries to the loopback receiver, retried and re-dispatched within seconds.
FAST_WEBHOOKS = {
    "INFERQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "INFERQ_WEBHOOK_RETRY_SCHEDULE": SCHEDULE,
    "INFERQ_WEBHOOK_DISPATCH_INTERVAL_SECONDS": "0.5",
    "INFERQ_WEBHOOK_REDISPATCH_AFTER_SECONDS": "5",
}


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
    stack, pg_url = chaos_stack(**FAST_WEBHOOKS)  # type: ignore[operator]
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


@pytest.mark.timeout(600)
def test_a_sender_killed_mid_attempt_leaves_no_event_undelivered(chaos_stack: object) -> None:
    """SIGKILL the webhook sender while its attempts wait on a slow receiver: the attempts'
    leases run out, beat's dispatcher sends them again and a new sender delivers every event.
    Delivery is at least once (an attempt answered 2xx just before the kill is sent again, with
    the same webhook-id for the receiver to dedupe on); the figures count those repeats."""
    jobs = scaled(ci=20, full=200)
    kills = scaled(ci=2, full=6)
    stack, pg_url = chaos_stack(  # type: ignore[operator]
        **FAST_WEBHOOKS, INFERQ_WEBHOOK_TIMEOUT_SECONDS="3", INFERQ_WEBHOOK_CONCURRENCY="4"
    )
    key = stack.run("keys", "create", "hooks")
    api = stack.start_api()
    stack.start("beat", "beat")
    stack.start_worker()
    receiver = Receiver(delay_seconds=0.5).start()
    try:
        with httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            for n in range(jobs):
                body = {
                    "task": "sentiment",
                    "inputs": [f"killed sender {n}: a {uuid.uuid4().hex[:8]} film ."],
                    "webhook_url": receiver.url,
                }
                assert client.post("/v1/jobs", json=body).status_code == 202
        database = Database(pg_url)
        wait_for(lambda: len(_deliveries(database)) == jobs, 180, "every job to finish")
        started = time.monotonic()
        for kill in range(kills):
            name = f"webhooks-{kill}"
            stack.start(name, "worker", "--queues", "webhooks")
            seen = len(receiver.requests())
            wait_for(
                lambda seen=seen: len(receiver.requests()) > seen,
                60,
                "attempts in flight",
                stack,
                name,
            )
            stack.kill(name)
        stack.start("webhooks-last", "worker", "--queues", "webhooks")
        wait_for(
            lambda: all(row.status == "delivered" for row in _deliveries(database)),
            300,
            "every event to be delivered after the kills",
            stack,
            "webhooks-last",
        )
        recovered = time.monotonic() - started
        requests = receiver.requests()
    finally:
        receiver.stop()
    rows = _deliveries(database)
    ok = [r.headers["webhook-id"] for r in requests if r.answered == 200]
    record_figures(
        "webhook_sender_killed",
        events=jobs,
        kills=kills,
        requests=len(requests),
        delivered=sum(row.status == "delivered" for row in rows),
        lost=len({row.event_id for row in rows} - set(ok)),
        repeated_after_kill=len(ok) - len(set(ok)),
        seconds_to_deliver_all=round(recovered, 1),
    )
    assert {row.event_id for row in rows} == set(ok)
    database.dispose()
