"""The HTTP edge: every bad request is a 4xx application/problem+json, never a 500.

The real FastAPI app in embedded mode over a real (migrated SQLite) database; no worker runs, so
jobs stay queued, which is all these tests need. Nothing here loads a model.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.config import Settings
from core.db.session import Database
from core.security.keys import create_key

MAX_INPUTS = 4
MAX_CHARS = 100
MAX_BODY = 4096
MAX_WAIT = 1.0


def edge_settings(database: Database, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database.url,
        "broker_url": "memory://localhost/",
        "require_api_keys": False,
        "max_inputs_per_job": MAX_INPUTS,
        "max_text_chars": MAX_CHARS,
        "max_body_bytes": MAX_BODY,
        "max_wait_seconds": MAX_WAIT,
        "log_format": "console",
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def client(sqlite_db: Database) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a 500 must show up as a failed status assertion, not as an
    # exception raised through the test client.
    with TestClient(create_app(edge_settings(sqlite_db)), raise_server_exceptions=False) as client:
        yield client


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def post_raw(client: TestClient, body: bytes | Iterator[bytes], **headers: str) -> httpx.Response:
    return client.post(
        "/v1/jobs", content=body, headers={"Content-Type": "application/json", **headers}
    )


def post_job(
    client: TestClient, body: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    return client.post(
        "/v1/jobs", json=body or {"task": "sentiment", "inputs": ["good"]}, headers=headers
    )


def created_job(client: TestClient, **headers: str) -> str:
    response = post_job(client, **headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


# --- the happy path these edges guard ---------------------------------------------------------


def test_valid_job_is_accepted_with_a_location(client: TestClient) -> None:
    response = post_job(client)
    assert response.status_code == 202
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    assert response.json()["status"] == "queued"


# --- body content -----------------------------------------------------------------------------


def test_empty_inputs_list_is_422(client: TestClient) -> None:
    body = problem(post_job(client, {"task": "sentiment", "inputs": []}), 422)
    assert "inputs is empty" in body["detail"]


def test_blank_text_is_422_naming_the_input(client: TestClient) -> None:
    body = problem(post_job(client, {"task": "sentiment", "inputs": ["ok", "   "]}), 422)
    assert body["detail"].startswith("inputs[1] is empty")


def test_text_over_max_text_chars_is_422(client: TestClient) -> None:
    body = problem(post_job(client, {"task": "sentiment", "inputs": ["a" * (MAX_CHARS + 1)]}), 422)
    assert f"the limit is {MAX_CHARS}" in body["detail"]


def test_more_than_max_inputs_per_job_is_422(client: TestClient) -> None:
    inputs = ["x"] * (MAX_INPUTS + 1)
    body = problem(post_job(client, {"task": "sentiment", "inputs": inputs}), 422)
    assert f"the limit is {MAX_INPUTS}" in body["detail"]


def test_nul_byte_is_422(client: TestClient) -> None:
    body = problem(post_job(client, {"task": "sentiment", "inputs": ["a\u0000b"]}), 422)
    assert "NUL byte" in body["detail"]


def test_lone_surrogate_sent_as_a_json_escape_is_422(client: TestClient) -> None:
    body = problem(post_raw(client, b'{"task":"sentiment","inputs":["\\ud800"]}'), 422)
    assert "lone surrogate" in body["detail"]


def test_lone_surrogate_in_metadata_is_422(client: TestClient) -> None:
    raw = b'{"task":"sentiment","inputs":["ok"],"metadata":{"note":"\\ud800"}}'
    problem(post_raw(client, raw), 422)


def test_control_character_is_422(client: TestClient) -> None:
    body = problem(post_job(client, {"task": "sentiment", "inputs": ["ring \u0007"]}), 422)
    assert "control character U+0007" in body["detail"]


def test_tab_and_newline_are_accepted(client: TestClient) -> None:
    assert post_job(client, {"task": "sentiment", "inputs": ["a\tb\nc"]}).status_code == 202


def test_invalid_utf8_body_is_4xx(client: TestClient) -> None:
    response = post_raw(client, b'{"task":"sentiment","inputs":["\xff\xfe"]}')
    problem(response, 400)


def test_non_json_body_is_422(client: TestClient) -> None:
    body = problem(post_raw(client, b"task=sentiment&inputs=hello"), 422)
    assert "JSON decode error" in body["detail"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"task": "sentiment", "inputs": "just one string"}, "inputs"),
        ({"task": "sentiment", "inputs": [1]}, "inputs.0"),
        ({"task": 5, "inputs": ["ok"]}, "task"),
        ({"inputs": ["ok"]}, "body"),  # "give exactly one of `task` ... or `tasks` ..."
        ([{"task": "sentiment", "inputs": ["ok"]}], "body"),
    ],
)
def test_wrong_json_types_are_422_naming_the_field(
    client: TestClient, payload: Any, field: str
) -> None:
    body = problem(post_raw(client, json.dumps(payload).encode()), 422)
    assert body["detail"].startswith(f"{field}: ")


def test_unknown_task_is_422_listing_the_tasks(client: TestClient) -> None:
    body = problem(post_job(client, {"task": "translate", "inputs": ["ok"]}), 422)
    assert body["title"] == "Unknown task"
    assert "available tasks: embed, langid, ner, sentiment, topic" in body["detail"]


def test_unknown_extra_field_is_422(client: TestClient) -> None:
    body = problem(post_job(client, {"task": "sentiment", "inputs": ["ok"], "model": "x"}), 422)
    assert body["detail"].startswith("model: ")


def test_bad_priority_is_422(client: TestClient) -> None:
    body = problem(
        post_job(client, {"task": "sentiment", "inputs": ["ok"], "priority": "now"}), 422
    )
    assert body["detail"].startswith("priority: ")


# --- body size --------------------------------------------------------------------------------


def oversized() -> bytes:
    return b'{"task":"sentiment","inputs":["' + b"a" * MAX_BODY + b'"]}'


def test_body_over_max_body_bytes_with_content_length_is_413(client: TestClient) -> None:
    body = problem(post_raw(client, oversized()), 413)
    assert f"over {MAX_BODY} bytes" in body["detail"]


def test_chunked_body_over_max_body_bytes_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        data = oversized()
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    problem(post_raw(client, chunks()), 413)


# --- paths and queries ------------------------------------------------------------------------


def test_malformed_job_id_is_422(client: TestClient) -> None:
    body = problem(client.get("/v1/jobs/not-a-uuid"), 422)
    assert body["detail"].startswith("path.job_id: ")


def test_unknown_job_id_is_404(client: TestClient) -> None:
    problem(client.get(f"/v1/jobs/{uuid.uuid4()}"), 404)


def test_cancelling_an_unknown_job_is_404(client: TestClient) -> None:
    problem(client.delete(f"/v1/jobs/{uuid.uuid4()}"), 404)


def test_cancelling_a_job_twice_is_409(client: TestClient) -> None:
    job_id = created_job(client)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
    problem(client.delete(f"/v1/jobs/{job_id}"), 409)


@pytest.mark.parametrize(
    "cursor", ["garbage", base64.urlsafe_b64encode(b"yesterday|not-a-uuid").decode()]
)
def test_garbage_cursor_is_422(client: TestClient, cursor: str) -> None:
    body = problem(client.get("/v1/jobs", params={"cursor": cursor}), 422)
    assert "cursor is not valid" in body["detail"]


def test_unknown_status_filter_is_422(client: TestClient) -> None:
    problem(client.get("/v1/jobs", params={"status": "paused"}), 422)


def test_wait_above_the_maximum_is_422(client: TestClient) -> None:
    job_id = created_job(client)
    body = problem(client.get(f"/v1/jobs/{job_id}", params={"wait": MAX_WAIT + 1}), 422)
    assert f"wait is at most {MAX_WAIT}" in body["detail"]


@pytest.mark.parametrize("wait", ["-1", "nan", "soon"])
def test_wait_that_is_not_a_non_negative_number_is_422(client: TestClient, wait: str) -> None:
    job_id = created_job(client)
    problem(client.get(f"/v1/jobs/{job_id}", params={"wait": wait}), 422)


# --- idempotency over HTTP --------------------------------------------------------------------


def test_replayed_idempotency_key_returns_the_same_job(client: TestClient) -> None:
    first = post_job(client, **{"Idempotency-Key": "order-1"})
    again = post_job(client, **{"Idempotency-Key": "order-1"})
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"


def test_idempotency_key_reused_with_another_body_is_422(client: TestClient) -> None:
    post_job(client, **{"Idempotency-Key": "order-1"})
    other = {"task": "sentiment", "inputs": ["something else"]}
    body = problem(post_job(client, other, **{"Idempotency-Key": "order-1"}), 422)
    assert body["title"] == "Idempotency key reused"


def test_idempotency_key_over_255_characters_is_422(client: TestClient) -> None:
    problem(post_job(client, **{"Idempotency-Key": "k" * 256}), 422)


# --- request id -------------------------------------------------------------------------------


def test_x_request_id_is_echoed_back(client: TestClient) -> None:
    response = post_job(client, **{"X-Request-ID": "trace-abc-123"})
    assert response.headers["x-request-id"] == "trace-abc-123"


def test_x_request_id_is_echoed_on_errors_too(client: TestClient) -> None:
    response = client.get(f"/v1/jobs/{uuid.uuid4()}", headers={"X-Request-ID": "trace-404"})
    assert response.headers["x-request-id"] == "trace-404"


def test_a_request_id_is_generated_when_none_is_sent(client: TestClient) -> None:
    assert post_job(client).headers["x-request-id"]


# --- API keys ---------------------------------------------------------------------------------


@pytest.fixture
def keyed_client(sqlite_db: Database) -> Iterator[TestClient]:
    settings = edge_settings(sqlite_db, require_api_keys=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def api_key(database: Database, tenant: str) -> str:
    with database.transaction() as session:
        return create_key(session, tenant).key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_api_key_is_401_with_a_bearer_challenge(keyed_client: TestClient) -> None:
    response = post_job(keyed_client)
    body = problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in body["detail"]


def test_unknown_api_key_is_401(keyed_client: TestClient) -> None:
    problem(post_job(keyed_client, **bearer("iq_not-a-real-key")), 401)


def test_created_api_key_works_as_a_bearer_token(
    keyed_client: TestClient, sqlite_db: Database
) -> None:
    assert post_job(keyed_client, **bearer(api_key(sqlite_db, "alice"))).status_code == 202


def test_created_api_key_works_in_the_x_api_key_header(
    keyed_client: TestClient, sqlite_db: Database
) -> None:
    key = api_key(sqlite_db, "alice")
    assert post_job(keyed_client, **{"X-API-Key": key}).status_code == 202


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_another_tenants_key_gets_404_for_the_job(
    keyed_client: TestClient, sqlite_db: Database, method: str
) -> None:
    alice, bob = api_key(sqlite_db, "alice"), api_key(sqlite_db, "bob")
    job_id = created_job(keyed_client, **bearer(alice))
    problem(keyed_client.request(method, f"/v1/jobs/{job_id}", headers=bearer(bob)), 404)
    assert (
        keyed_client.get(f"/v1/jobs/{job_id}", headers=bearer(alice)).json()["status"] == "queued"
    )


def test_another_tenants_jobs_are_not_listed(keyed_client: TestClient, sqlite_db: Database) -> None:
    alice, bob = api_key(sqlite_db, "alice"), api_key(sqlite_db, "bob")
    created_job(keyed_client, **bearer(alice))
    assert keyed_client.get("/v1/jobs", headers=bearer(bob)).json()["data"] == []


# --- docs -------------------------------------------------------------------------------------


def test_docs_page_is_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200


def test_openapi_lists_the_jobs_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}"} <= set(paths)
