"""TLS on every hop, against real services: `inferq serve` over HTTPS, PostgreSQL's sslmode, and a
TLS-only redis-server as broker and cache (rediss://). The certificates are made here: a throwaway
CA and a server certificate for 127.0.0.1 and localhost, so nothing depends on the host's trust."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from core.db.session import Database
from tests.conftest import stack_env
from tests.services import (
    PG_ADMIN,
    REPO,
    ServerCertificate,
    Stack,
    free_port,
    fresh_postgres_database,
    fresh_redis_db,
    tls_postgres_server,
    wait_for,
)

pytestmark = pytest.mark.integration

KEY_PASSWORD = "correct horse battery staple"
JOB = {"task": "sentiment", "inputs": ["great film"]}


# --- certificates -------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, password: str | None = None) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    path.chmod(0o600)  # PostgreSQL and redis refuse or warn on a world-readable key
    return path


def make_certificate(folder: Path, key_password: str | None = None) -> ServerCertificate:
    """A CA (ca.pem) and a certificate it signed for 127.0.0.1 and localhost (server.pem)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("inferq test CA"))
        .issuer_name(_name("inferq test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cafile = folder / "ca.pem"
    cafile.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    certfile = folder / "server.pem"
    certfile.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    keyfile = _write_key(server_key, folder / "server.key", key_password)
    return ServerCertificate(certfile=certfile, keyfile=keyfile, cafile=cafile)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


# --- inferq serve over HTTPS --------------------------------------------------------------------


def https_client(tls: ServerCertificate, stack: Stack, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(
        base_url=stack.api_url or "", verify=tls.client_context(), headers=headers, timeout=30
    )


@pytest.fixture(scope="module")
def https_stack(
    tmp_path_factory: pytest.TempPathFactory, certificate: ServerCertificate
) -> Iterator[tuple[Stack, str]]:
    """`inferq serve --ssl-certfile --ssl-keyfile` as one process (`--workers N` has its own test)
    and an API key; no worker, since only the HTTP hop is under test."""
    data_dir = tmp_path_factory.mktemp("https")
    with fresh_postgres_database() as pg_url, fresh_redis_db(7) as redis_url:
        stack = Stack(stack_env(pg_url, redis_url, data_dir, INFERQ_API_WORKERS="1"), data_dir)
        try:
            stack.run("db", "upgrade")
            key = stack.run("keys", "create", "alice")
            stack.start_api(tls=certificate)
            yield stack, key
        finally:
            stack.stop_all()


def test_client_trusting_the_ca_submits_a_job_over_https(
    https_stack: tuple[Stack, str], certificate: ServerCertificate
) -> None:
    stack, key = https_stack
    assert stack.api_url and stack.api_url.startswith("https://")

    with https_client(certificate, stack, key) as client:
        created = client.post("/v1/jobs", json=JOB)

    assert created.status_code == 202, created.text


def test_plain_http_to_the_https_port_gets_no_answer(https_stack: tuple[Stack, str]) -> None:
    stack, _ = https_stack
    plain_url = (stack.api_url or "").replace("https://", "http://")

    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain_url}/healthz", timeout=5)


def test_client_that_does_not_trust_the_ca_fails_verification(
    https_stack: tuple[Stack, str],
) -> None:
    stack, _ = https_stack

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{stack.api_url}/healthz", timeout=5)  # the system's CAs only


def test_responses_carry_no_server_header(
    https_stack: tuple[Stack, str], certificate: ServerCertificate
) -> None:
    stack, _ = https_stack

    with https_client(certificate, stack) as client:
        response = client.get("/healthz")

    assert response.status_code == 200
    assert "server" not in response.headers, response.headers


def test_multi_process_api_serves_https_without_a_server_header(
    stack_factory: object, certificate: ServerCertificate
) -> None:
    stack: Stack = stack_factory()  # type: ignore[operator]
    stack.start_api("--workers", "2", tls=certificate)

    with https_client(certificate, stack) as client:
        response = client.get("/healthz")

    assert response.status_code == 200
    assert "server" not in response.headers, response.headers


def test_encrypted_key_is_unlocked_with_the_password_from_the_environment(
    stack_factory: object, tmp_path: Path
) -> None:
    encrypted = make_certificate(tmp_path / "encrypted", key_password=KEY_PASSWORD)
    assert b"ENCRYPTED PRIVATE KEY" in encrypted.keyfile.read_bytes()
    stack: Stack = stack_factory(INFERQ_SSL_KEYFILE_PASSWORD=KEY_PASSWORD)  # type: ignore[operator]

    url = stack.start_api(tls=encrypted)  # returns once https /healthz answers 200

    assert url.startswith("https://")


def test_serve_refuses_a_certificate_without_its_key(
    certificate: ServerCertificate, tmp_path: Path
) -> None:
    env = {**os.environ, "INFERQ_DATA_DIR": str(tmp_path), "COLUMNS": "200"}

    refused = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--ssl-certfile", str(certificate.certfile)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert refused.returncode == 2, refused.stderr
    assert "HTTPS needs both the certificate and its private key" in refused.stderr


# --- PostgreSQL sslmode -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_postgres(certificate: ServerCertificate) -> Iterator[str]:
    """The admin URL of a PostgreSQL 15 of this module's own, with ssl = on and the test's
    certificate (the system server on 5432 has ssl = off)."""
    with tls_postgres_server(certificate) as admin_url:
        yield admin_url


@pytest.fixture
def tls_pg_url(tls_postgres: str) -> str:
    """inferq's URL for the TLS server, without an sslmode: each test adds its own."""
    return tls_postgres.replace("postgresql://", "postgresql+psycopg://")


@pytest.fixture
def databases() -> Iterator[Callable[[str], Database]]:
    """inferq's own Database for a URL, disposed after the test."""
    made: list[Database] = []

    def make(url: str) -> Database:
        made.append(Database(url))
        return made[-1]

    yield make
    for database in made:
        database.dispose()


def backend_uses_ssl(database: Database) -> bool:
    with database.read() as session:
        return bool(
            session.execute(
                text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            ).scalar_one()
        )


def db_upgrade(database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`inferq db upgrade` as a user runs it, against `database_url`."""
    env = {**os.environ, "INFERQ_DATABASE_URL": database_url, "INFERQ_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "cli", "db", "upgrade"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sslmode_require_connects_over_tls(
    databases: Callable[[str], Database], tls_pg_url: str
) -> None:
    database = databases(f"{tls_pg_url}?sslmode=require")

    assert backend_uses_ssl(database) is True


def test_sslmode_verify_full_accepts_the_certificate_for_127_0_0_1(
    databases: Callable[[str], Database], tls_pg_url: str, certificate: ServerCertificate
) -> None:
    database = databases(f"{tls_pg_url}?sslmode=verify-full&sslrootcert={certificate.cafile}")

    assert backend_uses_ssl(database) is True


def test_sslmode_verify_full_refuses_a_server_signed_by_another_ca(
    databases: Callable[[str], Database], tls_pg_url: str, tmp_path: Path
) -> None:
    stranger = make_certificate(tmp_path / "stranger")
    database = databases(f"{tls_pg_url}?sslmode=verify-full&sslrootcert={stranger.cafile}")

    with pytest.raises(OperationalError, match="certificate verify failed"):
        backend_uses_ssl(database)


def test_sslmode_disable_connects_without_tls_to_a_server_that_offers_it(
    databases: Callable[[str], Database], tls_pg_url: str
) -> None:
    database = databases(f"{tls_pg_url}?sslmode=disable")

    assert backend_uses_ssl(database) is False


def test_sslmode_require_is_refused_by_a_server_without_ssl(
    databases: Callable[[str], Database], pg_url: str
) -> None:
    with psycopg.connect(PG_ADMIN) as admin:
        system_ssl = admin.execute("SHOW ssl").fetchone()
    assert system_ssl == ("off",), (
        f"this test needs the system PostgreSQL with ssl = off: {PG_ADMIN}"
    )
    database = databases(f"{pg_url}?sslmode=require")

    # libpq's own words: the client asked for TLS and did not fall back to plain text.
    with pytest.raises(OperationalError, match="server does not support SSL, but SSL was required"):
        backend_uses_ssl(database)


def test_db_upgrade_migrates_over_verified_tls(
    databases: Callable[[str], Database],
    tls_postgres: str,
    certificate: ServerCertificate,
    tmp_path: Path,
) -> None:
    with fresh_postgres_database(admin_url=tls_postgres) as url:
        verified = f"{url}?sslmode=verify-full&sslrootcert={certificate.cafile}"

        upgraded = db_upgrade(verified, tmp_path)

        assert upgraded.returncode == 0, upgraded.stderr
        with databases(verified).read() as session:
            version = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version, "db upgrade exited 0 but left no alembic_version row"


def test_db_upgrade_refuses_a_server_signed_by_another_ca(
    tls_postgres: str, tmp_path: Path
) -> None:
    stranger = make_certificate(tmp_path / "stranger")
    with fresh_postgres_database(admin_url=tls_postgres) as url:
        refused = db_upgrade(f"{url}?sslmode=verify-full&sslrootcert={stranger.cafile}", tmp_path)

    # The URL's sslmode and sslrootcert reached libpq through inferq's settings and alembic.
    assert refused.returncode != 0
    assert "certificate verify failed" in refused.stderr, refused.stderr[-3000:]


# --- rediss:// as broker and cache --------------------------------------------------------------


@pytest.fixture
def tls_redis_url(certificate: ServerCertificate, tmp_path: Path) -> Iterator[str]:
    """A TLS-only redis-server (no plain port) on a free port; its rediss:// URL verifies the
    server's certificate against the test CA."""
    server = shutil.which("redis-server")
    assert server, "redis-server is not on PATH"
    port = free_port()
    log = (tmp_path / "redis-tls.log").open("wb")
    # fmt: off
    process = subprocess.Popen(
        [
            server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(certificate.certfile),
            "--tls-key-file", str(certificate.keyfile),
            "--tls-ca-cert-file", str(certificate.cafile),
            "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
            "--dir", str(tmp_path),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # fmt: on
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={certificate.cafile}"
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:

        def answers() -> bool:
            assert process.poll() is None, (tmp_path / "redis-tls.log").read_text()
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(answers, 30, "the TLS redis-server to answer PING over TLS")
        yield url
    finally:
        client.close()
        process.kill()
        process.wait(timeout=10)
        log.close()


def test_job_completes_with_broker_and_cache_on_rediss(
    tls_redis_url: str, stack_factory: object
) -> None:
    # tls_redis_url first: pytest tears fixtures down in reverse, so the stack stops before redis.
    stack: Stack = stack_factory(INFERQ_BROKER_URL=tls_redis_url)  # type: ignore[operator]
    key = stack.run("keys", "create", "alice")
    stack.start_api()
    stack.start("beat", "beat")
    stack.start_worker()

    with httpx.Client(
        base_url=stack.api_url or "", headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        created = client.post("/v1/jobs", json=JOB)
        assert created.status_code == 202, created.text
        job = client.get(created.headers["location"], params={"wait": 30}).json()

    assert job["status"] == "succeeded", job
    assert job["results"][0]["label"] == "positive"
    with redis.Redis.from_url(tls_redis_url) as tls_redis:  # the L1 cache is on it too
        assert tls_redis.keys("inferq:result:sentiment:*"), "no L1 cache entry on the TLS redis"
    # kombu's warning when a rediss:// URL carries no ssl_* options and skips verification:
    assert all("insecure SSL" not in stack.log(name) for name in ("api", "worker", "beat"))
