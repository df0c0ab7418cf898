"""A database that cannot be reached is an outage, not a bug: the API answers 503 problem+json
with Retry-After (never a 500) on every route that needs it, the auth path included. No server:
the app points at a PostgreSQL port where nothing listens."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa

from api.app import create_app
from api.errors import database_unreachable
from core.config import Settings
from tests.services import free_port


def _app(require_api_keys: bool) -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone",
        broker_url="memory://localhost/",
        require_api_keys=require_api_keys,
        log_format="console",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def keyless() -> Iterator[TestClient]:
    yield from _app(require_api_keys=False)


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    yield from _app(require_api_keys=True)


def _unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["status"] == 503 and body["title"] == "Service unavailable"
    assert "database" in body["detail"]


def test_reading_a_job_while_the_database_is_down_is_a_503(keyless: TestClient) -> None:
    _unavailable(keyless.get(f"/v1/jobs/{uuid.uuid4()}"))


def test_submitting_while_the_database_is_down_is_a_503(keyless: TestClient) -> None:
    _unavailable(keyless.post("/v1/jobs", json={"task": "sentiment", "inputs": ["fine"]}))


def test_a_key_not_yet_cached_cannot_be_checked_and_is_a_503_not_a_401(keyed: TestClient) -> None:
    response = keyed.get("/v1/jobs", headers={"Authorization": "Bearer iq_not-checkable"})
    _unavailable(response)


def test_errors_of_a_reachable_database_are_not_outages() -> None:
    integrity = sa.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation())
    deadlock = sa.OperationalError("UPDATE", {}, psycopg.errors.DeadlockDetected())
    shutting_down = sa.OperationalError("SELECT", {}, psycopg.errors.AdminShutdown())
    refused = sa.OperationalError("connect", {}, psycopg.OperationalError("connection refused"))

    assert not database_unreachable(integrity)
    assert not database_unreachable(deadlock)
    assert database_unreachable(shutting_down)
    assert database_unreachable(refused)
    assert database_unreachable(sa.TimeoutError("QueuePool limit reached"))
