"""Who may do what, and how much: scopes, JWTs, rate limits, quotas, CORS, response headers and
the audit trail, on the real app over a real PostgreSQL database with its rate limits counted in
a real Redis. No worker runs here: submitted jobs stay pending, which is what quotas count.

Processes (two API processes sharing one budget, and a full run whose logs must hold no secret)
are in test_security_processes.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from typer.testing import CliRunner

from api.app import create_app
from cli.main import app as cli
from core.config import Settings, get_settings
from core.db.models import ApiKey, AuditEvent, Job, utcnow
from core.db.session import Database
from core.security.keys import create_key
from core.security.tenants import set_limits

pytestmark = pytest.mark.integration

ISSUER = "https://idp.example.com/"
AUDIENCE = "inferq"
JOB = {"task": "sentiment", "inputs": ["good", "bad"]}


# --- the app under test ------------------------------------------------------------------------


def settings_for(database: Database, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database.url,
        "broker_url": "memory://localhost/",
        "require_api_keys": True,
        "api_key_cache_seconds": 0,
        "rate_limits": "",
        "rate_limit_storage_url": redis_url,
        "secret_key": "security-tests-secret-key",
        "log_format": "console",
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def serve(pg_db: Database, redis_url: str) -> Iterator[Any]:
    clients: list[TestClient] = []

    def start(**overrides: Any) -> TestClient:
        app = create_app(settings_for(pg_db, redis_url, **overrides))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def key_for(database: Database, tenant: str, scopes: str | None = None, **extra: Any) -> str:
    with database.transaction() as session:
        if scopes is None:
            return create_key(session, tenant, **extra).key
        return create_key(session, tenant, scopes.split(","), **extra).key


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


# --- scopes --------------------------------------------------------------------------------------


def test_a_key_without_the_routes_scope_gets_403_naming_it(serve: Any, pg_db: Database) -> None:
    client = serve()
    reader = key_for(pg_db, "acme", "jobs:read")

    refused = client.post("/v1/jobs", json=JOB, headers=bearer(reader))

    body = problem(refused, 403)
    assert body["missing_scope"] == "jobs:write" and "jobs:write" in body["detail"]
    assert client.get("/v1/jobs", headers=bearer(reader)).status_code == 200
    problem(client.get("/v1/batches", headers=bearer(reader)), 403)
    problem(client.get("/v1/webhooks/secret", headers=bearer(reader)), 403)
    with pg_db.read() as session:
        assert session.scalar(select(Job.id)) is None


def test_a_default_key_has_every_scope_but_admin_and_admin_holds_them_all(
    serve: Any, pg_db: Database
) -> None:
    client = serve()
    default, admin = key_for(pg_db, "acme"), key_for(pg_db, "root", "admin")
    models_only = key_for(pg_db, "viewer", "models:read")

    for key in (default, admin):
        assert client.post("/v1/jobs", json=JOB, headers=bearer(key)).status_code == 202
        assert client.get("/v1/webhooks/secret", headers=bearer(key)).status_code == 200
    assert client.get("/v1/models", headers=bearer(models_only)).status_code == 200
    problem(client.get("/v1/jobs", headers=bearer(models_only)), 403)
    with pg_db.read() as session:
        scopes = dict(session.execute(select(ApiKey.name, ApiKey.scopes)).all())
    assert "admin" not in scopes["acme"].split() and scopes["root"] == "admin"


def test_expired_and_revoked_keys_get_401(serve: Any, pg_db: Database) -> None:
    client = serve()
    expiring = key_for(pg_db, "acme", expires_at=utcnow() + timedelta(hours=1))
    revoked = key_for(pg_db, "globex")
    assert client.get("/v1/jobs", headers=bearer(expiring)).status_code == 200

    with pg_db.transaction() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.name == "acme")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        session.execute(update(ApiKey).where(ApiKey.name == "globex").values(revoked_at=utcnow()))

    assert "expired" in problem(client.get("/v1/jobs", headers=bearer(expiring)), 401)["detail"]
    assert "revoked" in problem(client.get("/v1/jobs", headers=bearer(revoked)), 401)["detail"]
    assert client.get("/v1/jobs", headers=bearer(revoked)).headers["www-authenticate"] == "Bearer"


# --- JWTs ----------------------------------------------------------------------------------------


def pem(public_key: Any) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, Any]:
    return {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


@pytest.fixture
def jwt_client(
    serve: Any, signing_keys: dict[str, Any], tmp_path: Path
) -> tuple[TestClient, TestClient]:
    """Two apps: one trusts the RSA and Ed25519 keys as PEM and an HS256 secret, the other the
    EC key as a JWKS entry with a kid."""
    pems = tmp_path / "idp-keys.pem"
    pems.write_text(
        pem(signing_keys["RS256"].public_key()) + pem(signing_keys["EdDSA"].public_key())
    )
    jwks = tmp_path / "jwks.json"
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signing_keys["ES256"].public_key()))
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "ec-1", "alg": "ES256", "use": "sig"}]}))
    return serve(
        jwt_public_keys=str(pems),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_secret="an-hs256-secret-of-at-least-32-bytes!",
    ), serve(jwt_public_keys=str(jwks), jwt_issuer=ISSUER, jwt_audience=AUDIENCE)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "acme",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "scope": "jobs:write jobs:read",
    }
    return {key: value for key, value in {**base, **overrides}.items() if value is not None}


def sign(keys: dict[str, Any], algorithm: str, **overrides: Any) -> str:
    headers = {"kid": "ec-1"} if algorithm == "ES256" else None
    return jwt.encode(claims(**overrides), keys[algorithm], algorithm=algorithm, headers=headers)


@pytest.mark.parametrize("algorithm", ["RS256", "EdDSA", "ES256"])
def test_a_signed_jwt_acts_for_its_tenant_with_its_scopes(
    jwt_client: Any, signing_keys: dict[str, Any], pg_db: Database, algorithm: str
) -> None:
    client = jwt_client[1] if algorithm == "ES256" else jwt_client[0]
    token = sign(signing_keys, algorithm, scope=None, scp=["jobs:write", "jobs:read", "other"])

    created = client.post("/v1/jobs", json=JOB, headers=bearer(token))

    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    acme_key, bob_key = key_for(pg_db, "acme", "jobs:read"), key_for(pg_db, "bob", "jobs:read")
    assert client.get(f"/v1/jobs/{job_id}", headers=bearer(acme_key)).status_code == 200
    problem(client.get(f"/v1/jobs/{job_id}", headers=bearer(bob_key)), 404)
    problem(client.get("/v1/batches", headers=bearer(token)), 403)  # no batches:read in scp


def test_the_tenant_claim_is_configurable(serve: Any, signing_keys: dict[str, Any]) -> None:
    client = serve(
        jwt_public_keys=pem(signing_keys["RS256"].public_key()), jwt_tenant_claim="tenant"
    )
    with_tenant = sign(signing_keys, "RS256", sub="user-17", tenant="initech", aud=None, iss=None)
    without = sign(signing_keys, "RS256", aud=None, iss=None)

    created = client.post("/v1/jobs", json=JOB, headers=bearer(with_tenant))
    assert created.status_code == 202, created.text
    assert "'tenant'" in problem(client.get("/v1/jobs", headers=bearer(without)), 401)["detail"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


REFUSED = {
    "expired": lambda keys: sign(keys, "RS256", exp=int(time.time()) - 120),
    "not yet valid": lambda keys: sign(keys, "RS256", nbf=int(time.time()) + 600),
    "no exp": lambda keys: sign(keys, "RS256", exp=None),
    "wrong issuer": lambda keys: sign(keys, "RS256", iss="https://evil.example.com/"),
    "wrong audience": lambda keys: sign(keys, "RS256", aud="another-api"),
    "no audience": lambda keys: sign(keys, "RS256", aud=None),
    "alg none": lambda keys: forged({"alg": "none", "typ": "JWT"}, claims(), None),
    # Algorithm confusion: HS256 "signed" with the RSA public key the server trusts.
    "hs256 with the rsa public key": lambda keys: forged(
        {"alg": "HS256", "typ": "JWT"}, claims(), pem(keys["RS256"].public_key()).encode()
    ),
    "another rsa key": lambda keys: jwt.encode(
        claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
    ),
    "tampered payload": lambda keys: ".".join(
        [
            sign(keys, "RS256").split(".")[0],
            b64(json.dumps(claims(sub="globex")).encode()),
            sign(keys, "RS256").split(".")[2],
        ]
    ),
    "not a jwt": lambda keys: "not.a.jwt",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_token_that_does_not_verify_gets_401(
    jwt_client: Any, signing_keys: dict[str, Any], case: str
) -> None:
    token = REFUSED[case](signing_keys)

    problem(jwt_client[0].post("/v1/jobs", json=JOB, headers=bearer(token)), 401)


def test_hs256_is_accepted_only_with_the_configured_secret(
    jwt_client: Any, signing_keys: dict[str, Any]
) -> None:
    good = jwt.encode(claims(), "an-hs256-secret-of-at-least-32-bytes!", algorithm="HS256")
    wrong = jwt.encode(claims(), "another-secret-that-is-32-bytes-long!", algorithm="HS256")

    assert jwt_client[0].post("/v1/jobs", json=JOB, headers=bearer(good)).status_code == 202
    problem(jwt_client[0].post("/v1/jobs", json=JOB, headers=bearer(wrong)), 401)
    problem(jwt_client[1].post("/v1/jobs", json=JOB, headers=bearer(good)), 401)  # no secret set


def test_jwts_are_refused_where_no_key_is_configured(
    serve: Any, signing_keys: dict[str, Any]
) -> None:
    body = problem(serve().get("/v1/jobs", headers=bearer(sign(signing_keys, "RS256"))), 401)
    assert "INFERQ_JWT" in body["detail"]


# --- rate limits ---------------------------------------------------------------------------------


def test_a_burst_over_the_limit_gets_429_with_retry_after_and_ratelimit_fields(
    serve: Any, pg_db: Database
) -> None:
    client = serve(rate_limits="jobs:write=3/minute;default=100/minute")
    key = key_for(pg_db, "acme")

    answers = [client.post("/v1/jobs", json=JOB, headers=bearer(key)) for _ in range(5)]

    assert [answer.status_code for answer in answers] == [202, 202, 202, 429, 429]
    assert [a.headers["RateLimit"].split(";")[1] for a in answers[:3]] == ["r=2", "r=1", "r=0"]
    assert all(0 < int(a.headers["RateLimit"].split(";t=")[1]) <= 60 for a in answers)
    assert all(a.headers["RateLimit-Policy"] == '"jobs:write";q=3;w=60' for a in answers)
    refused = problem(answers[3], 429)
    assert "jobs:write" in refused["detail"]
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
    name, remaining, reset = answers[3].headers["RateLimit"].split(";")
    assert name == '"jobs:write"' and remaining == "r=0" and 0 <= int(reset[2:]) <= 60
    with pg_db.read() as session:
        assert len(session.scalars(select(Job.id)).all()) == 3


def test_route_classes_and_tenants_have_budgets_of_their_own(serve: Any, pg_db: Database) -> None:
    client = serve(rate_limits="jobs:write=2/minute;default=100/minute")
    acme, globex = key_for(pg_db, "acme"), key_for(pg_db, "globex")
    for _ in range(2):
        client.post("/v1/jobs", json=JOB, headers=bearer(acme))

    assert client.post("/v1/jobs", json=JOB, headers=bearer(acme)).status_code == 429
    read = client.get("/v1/jobs", headers=bearer(acme))
    assert read.status_code == 200  # counted as jobs:read, under the default limit
    assert read.headers["RateLimit-Policy"] == '"jobs:read";q=100;w=60'
    assert client.post("/v1/jobs", json=JOB, headers=bearer(globex)).status_code == 202


def test_a_tenants_own_limits_replace_the_default(serve: Any, pg_db: Database) -> None:
    client = serve(rate_limits="jobs:write=100/minute")
    key = key_for(pg_db, "acme")
    with pg_db.transaction() as session:
        set_limits(session, "acme", rate_limits="jobs:write=1/minute", actor="test")

    assert client.post("/v1/jobs", json=JOB, headers=bearer(key)).status_code == 202
    refused = client.post("/v1/jobs", json=JOB, headers=bearer(key))
    assert refused.status_code == 429 and refused.headers["RateLimit-Policy"].endswith("q=1;w=60")


def test_with_redis_down_the_limiter_fails_open_and_counts_it(serve: Any, pg_db: Database) -> None:
    client = serve(
        rate_limits="jobs:write=1/minute", rate_limit_storage_url="redis://127.0.0.1:9/0"
    )
    key = key_for(pg_db, "acme")
    before = REGISTRY.get_sample_value("inferq_rate_limiter_errors_total") or 0.0

    answers = [client.post("/v1/jobs", json=JOB, headers=bearer(key)) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [202, 202, 202]
    assert "RateLimit" not in answers[0].headers
    assert (REGISTRY.get_sample_value("inferq_rate_limiter_errors_total") or 0.0) > before


# --- quotas on work in flight -------------------------------------------------------------------


def test_a_submit_past_the_pending_quota_gets_429_and_writes_nothing(
    serve: Any, pg_db: Database
) -> None:
    client = serve(max_pending_inputs_per_tenant=5)
    acme, globex = key_for(pg_db, "acme"), key_for(pg_db, "globex")
    three = {"task": "sentiment", "inputs": ["a", "b", "c"]}
    assert client.post("/v1/jobs", json=three, headers=bearer(acme)).status_code == 202

    refused = client.post("/v1/jobs", json=three, headers=bearer(acme))

    body = problem(refused, 429)
    assert body["pending_inputs"] == 3 and body["max_pending_inputs"] == 5
    assert refused.headers["Retry-After"].isdigit()
    assert client.post("/v1/jobs", json=three, headers=bearer(globex)).status_code == 202
    with pg_db.transaction() as session:  # the first job finishes: room again
        session.execute(update(Job).where(Job.total_items == 3).values(status="succeeded"))
    assert client.post("/v1/jobs", json=three, headers=bearer(acme)).status_code == 202


def test_a_batch_past_the_quota_is_refused_whole(serve: Any, pg_db: Database) -> None:
    client = serve()
    key = key_for(pg_db, "acme")
    with pg_db.transaction() as session:
        set_limits(session, "acme", max_pending_inputs=100, actor="test")
    lines = "".join(json.dumps({"text": f"line {n}"}) + "\n" for n in range(150))

    refused = client.post(
        "/v1/batches",
        params={"task": "sentiment"},
        content=lines,
        headers={**bearer(key), "Content-Type": "application/x-ndjson"},
    )

    problem(refused, 429)
    assert client.get("/v1/batches", headers=bearer(key)).json()["data"] == []


# --- CORS and response headers ------------------------------------------------------------------


def preflight(client: TestClient, origin: str) -> httpx.Response:
    return client.options(
        "/v1/jobs",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


def test_without_cors_origins_no_response_has_cors_headers(serve: Any, pg_db: Database) -> None:
    client = serve()
    key = key_for(pg_db, "acme")

    answers = [
        preflight(client, "https://app.example.com"),
        client.get("/v1/jobs", headers={**bearer(key), "Origin": "https://app.example.com"}),
    ]

    assert all("access-control-allow-origin" not in answer.headers for answer in answers)


def test_only_the_configured_origins_get_cors_headers(serve: Any, pg_db: Database) -> None:
    client = serve(cors_origins="https://app.example.com")
    key = key_for(pg_db, "acme")

    allowed = preflight(client, "https://app.example.com")
    other = preflight(client, "https://evil.example.com")
    read = client.get("/v1/jobs", headers={**bearer(key), "Origin": "https://app.example.com"})

    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
    assert read.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "ratelimit" in read.headers["access-control-expose-headers"].lower()


def test_every_response_says_nosniff_and_api_answers_are_not_cached(
    serve: Any, pg_db: Database
) -> None:
    client = serve(rate_limits="default=100/minute")
    key = key_for(pg_db, "acme")

    answers = {
        "ok": client.get("/v1/jobs", headers=bearer(key)),
        "401": client.get("/v1/jobs"),
        "404": client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=bearer(key)),
        "health": client.get("/healthz"),
    }

    assert all(a.headers["x-content-type-options"] == "nosniff" for a in answers.values())
    assert all(
        answers[name].headers["cache-control"] == "no-store" for name in ("ok", "401", "404")
    )
    assert "RateLimit" in answers["ok"].headers and "server" not in answers["ok"].headers


# --- the audit trail -----------------------------------------------------------------------------


def test_cancels_rotations_keys_and_limits_are_audited_with_who_did_them(
    serve: Any, pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = serve()
    key = key_for(pg_db, "acme")
    job_id = client.post("/v1/jobs", json=JOB, headers=bearer(key)).json()["id"]
    assert client.delete(f"/v1/jobs/{job_id}", headers=bearer(key)).status_code == 200
    assert client.post("/v1/webhooks/secret/rotate", headers=bearer(key)).status_code == 200
    monkeypatch.setenv("INFERQ_DATABASE_URL", pg_db.url)
    get_settings.cache_clear()  # the app read the settings before the variable was set
    runner = CliRunner()
    assert (
        runner.invoke(cli, ["tenants", "set-limits", "acme", "--max-pending", "10"]).exit_code == 0
    )

    with pg_db.read() as session:
        events = session.execute(
            select(AuditEvent.action, AuditEvent.actor, AuditEvent.target).order_by(AuditEvent.id)
        ).all()
    listed = runner.invoke(cli, ["audit", "--since", "1h", "--tenant", "acme"])

    actions = [action for action, _, _ in events]
    assert actions == [
        "key.created",
        "job.cancelled",
        "webhook_secret.rotated",
        "tenant.limits_changed",
    ]
    assert events[1].actor == f"key:{key[:10]}" and events[1].target == job_id
    assert events[3].actor.startswith("cli:")
    assert listed.exit_code == 0 and all(action in listed.output for action in actions)


def test_another_tenants_jobs_batches_and_deliveries_are_404_on_every_route(
    serve: Any, pg_db: Database
) -> None:
    client = serve()
    owner, other = bearer(key_for(pg_db, "acme")), bearer(key_for(pg_db, "globex"))
    job_id = client.post("/v1/jobs", json=JOB, headers=owner).json()["id"]
    batch = client.post(
        "/v1/batches",
        params={"task": "sentiment"},
        content='{"text": "fine"}\n',
        headers={**owner, "Content-Type": "application/x-ndjson"},
    )
    batch_id = batch.json()["id"]

    tried = {
        "read job": client.get(f"/v1/jobs/{job_id}", headers=other),
        "cancel job": client.delete(f"/v1/jobs/{job_id}", headers=other),
        "redeliver": client.post(f"/v1/jobs/{job_id}/webhook/redeliver", headers=other),
        "read batch": client.get(f"/v1/batches/{batch_id}", headers=other),
        "cancel batch": client.post(f"/v1/batches/{batch_id}/cancel", headers=other),
        "results": client.get(f"/v1/batches/{batch_id}/results", headers=other),
    }

    assert {name: answer.status_code for name, answer in tried.items()} == dict.fromkeys(tried, 404)
    assert client.get("/v1/jobs", headers=other).json()["data"] == []
    assert client.get("/v1/batches", headers=other).json()["data"] == []
    assert client.get(f"/v1/jobs/{job_id}", headers=owner).json()["status"] == "queued"
