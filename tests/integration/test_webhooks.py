"""Webhooks against a real deployment: PostgreSQL, Redis, `inferq serve`, an inference worker,
a webhook sender (`inferq worker --queues webhooks`) and beat, each its own process, delivering
to a real HTTP receiver on loopback (allowed with INFERQ_WEBHOOK_ALLOWED_NETWORKS, as a
developer would)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.integration.conftest import Deployment, deployed
from tests.receiver import Receiver
from tests.services import wait_for

pytestmark = pytest.mark.integration

TEXTS = ["a warm , funny and deeply moving film .", "a tedious , clumsy mess ."]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    env = {
        "INFERQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "INFERQ_WEBHOOK_RETRY_SCHEDULE": "0,1,1,1",
        "INFERQ_WEBHOOK_DISPATCH_INTERVAL_SECONDS": "0.5",
    }
    with deployed(tmp_path_factory.mktemp("webhooks"), 14, **env) as running:
        running.stack.start("webhooks", "worker", "--queues", "webhooks")
        wait_for(lambda: "ready" in running.stack.log("webhooks"), 60, "the webhook sender")
        yield running


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def _submit(client: httpx.Client, receiver: Receiver, inputs: list[str] | None = None) -> str:
    body = {"task": "sentiment", "inputs": inputs or TEXTS, "webhook_url": receiver.url}
    created = client.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    assert created.json()["webhook"]["status"] == "pending"
    return str(created.json()["id"])


def _webhook_settles(client: httpx.Client, job_id: str, status: str = "delivered") -> Any:
    state: dict[str, Any] = {}

    def settled() -> bool:
        state.update(client.get(f"/v1/jobs/{job_id}").json()["webhook"])
        return state["status"] == status

    wait_for(settled, 60, f"the webhook of {job_id} to be {status}")
    return state


def test_a_finished_job_is_posted_once_signed_with_the_tenants_secret(
    deployment: Deployment, receiver: Receiver
) -> None:
    with deployment.client() as client:
        job_id = _submit(client, receiver)
        state = _webhook_settles(client, job_id)
        secret = client.get("/v1/webhooks/secret").json()["secret"]
        job = client.get(f"/v1/jobs/{job_id}").json()
    (got,) = receiver.requests()
    event = Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "job.completed"
    assert event["data"]["id"] == job_id
    assert event["data"]["results"] == job["results"]
    assert [r["label"] for r in event["data"]["results"]] == ["positive", "negative"]
    assert got.headers["user-agent"].startswith("inferq-webhooks/")
    assert (state["attempts"], state["last_status_code"]) == (1, 200)
    assert state["delivered_at"] is not None


def test_redeliver_sends_the_same_event_again(deployment: Deployment, receiver: Receiver) -> None:
    with deployment.client() as client:
        job_id = _submit(client, receiver)
        _webhook_settles(client, job_id)
        again = client.post(f"/v1/jobs/{job_id}/webhook/redeliver")
        assert again.status_code == 202, again.text
        assert again.json()["status"] == "pending"
        wait_for(lambda: len(receiver.requests()) == 2, 60, "the redelivery")
        _webhook_settles(client, job_id)
    first, second = receiver.requests()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_a_failing_receiver_is_retried_until_it_answers(
    deployment: Deployment, receiver: Receiver
) -> None:
    receiver.answer = lambda _headers: 500 if len(receiver.received) < 2 else 200
    with deployment.client() as client:
        job_id = _submit(client, receiver)
        state = _webhook_settles(client, job_id)
    assert [r.answered for r in receiver.requests()] == [500, 500, 200]
    assert state["attempts"] == 3
    assert len({r.headers["webhook-id"] for r in receiver.requests()}) == 1


def test_a_job_answered_from_the_cache_at_submit_is_posted_too(
    deployment: Deployment, receiver: Receiver
) -> None:
    inputs = [f"an entirely cached sentence number {uuid.uuid4().hex[:6]} ."]
    with deployment.client() as client:
        _webhook_settles(client, _submit(client, receiver, inputs))
        cached = client.post(
            "/v1/jobs", json={"task": "sentiment", "inputs": inputs, "webhook_url": receiver.url}
        ).json()
        assert cached["status"] == "succeeded"  # finished in its 202
        _webhook_settles(client, cached["id"])
    assert [r.answered for r in receiver.requests()] == [200, 200]


def test_after_a_rotation_deliveries_verify_with_the_old_and_new_secret(
    deployment: Deployment, receiver: Receiver
) -> None:
    with deployment.client(deployment.other_key) as client:
        old = client.get("/v1/webhooks/secret").json()["secret"]
        rotated = client.post("/v1/webhooks/secret/rotate")
        assert rotated.status_code == 200
        new = rotated.json()["secret"]
        assert new != old and client.get("/v1/webhooks/secret").json()["secret"] == new
        _webhook_settles(client, _submit(client, receiver))
    (got,) = receiver.requests()
    assert len(got.headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        Webhook(secret).verify(got.body, got.headers)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local (cloud metadata)"),
        ("http://[::ffff:10.0.0.1]/hook", "private network"),
        ("https://user:secret@hooks.example.com/", "user name or password"),
        ("ftp://hooks.example.com/", "http(s)"),
    ],
)
def test_blocked_webhook_urls_are_refused_at_submit(
    deployment: Deployment, url: str, says: str
) -> None:
    with deployment.client() as client:
        refused = client.post(
            "/v1/jobs", json={"task": "sentiment", "inputs": ["x y z"], "webhook_url": url}
        )
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert says in refused.json()["detail"]


def test_redeliver_of_an_unknown_or_unfinished_job_says_why(
    deployment: Deployment, receiver: Receiver
) -> None:
    with deployment.client() as client:
        missing = client.post(f"/v1/jobs/{uuid.uuid4()}/webhook/redeliver")
        plain = client.post("/v1/jobs", json={"task": "sentiment", "inputs": ["fine ."]}).json()
        client.get(f"/v1/jobs/{plain['id']}", params={"wait": 30})
        no_hook = client.post(f"/v1/jobs/{plain['id']}/webhook/redeliver")
    assert missing.status_code == 404
    assert no_hook.status_code == 409 and "no webhook_url" in no_hook.json()["detail"]


def test_a_batch_that_ends_posts_one_signed_batch_event(
    deployment: Deployment, receiver: Receiver
) -> None:
    body = "".join(f'{{"id": "w{i}", "text": "{TEXTS[i % 2]}"}}\n' for i in range(40))
    with deployment.client() as client:
        created = client.post(
            "/v1/batches",
            params={"task": "sentiment", "webhook_url": receiver.url},
            content=body.encode(),
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert created.status_code == 202, created.text
        batch_id = created.json()["id"]
        wait_for(lambda: len(receiver.requests()) >= 1, 90, "the batch event")
        secret = client.get("/v1/webhooks/secret").json()["secret"]
    (got,) = receiver.requests()
    event = Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch_id and event["data"]["object"] == "batch"
    assert event["data"]["request_counts"]["completed"] == 40
    assert event["data"]["results_url"].endswith(f"/v1/batches/{batch_id}/results")
