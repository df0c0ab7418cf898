"""Real services for integration tests: a fresh PostgreSQL database, a Redis db, and inferq
processes (API, worker, beat) started exactly as a user starts them, with ``inferq ...``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis

PG_ADMIN = os.environ.get("INFERQ_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("INFERQ_TEST_REDIS", "redis://127.0.0.1:6379")
PG_BIN = Path(os.environ.get("INFERQ_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
REPO = Path(__file__).resolve().parent.parent


def service_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def fresh_postgres_database(
    prefix: str = "inferq_test", admin_url: str = PG_ADMIN
) -> Iterator[str]:
    """A new, empty database for one test or benchmark run, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_redis_db(db: int, base_url: str = REDIS_BASE) -> Iterator[str]:
    """Redis database `db`, flushed before and after (tests and benchmarks own their numbers)."""
    url = f"{base_url}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerCertificate:
    """A server's PEM certificate and key, and the CA file a client verifies them with."""

    certfile: Path
    keyfile: Path
    cafile: Path

    def client_context(self) -> ssl.SSLContext:
        """Trust this CA, and nothing else."""
        return ssl.create_default_context(cafile=self.cafile)


@contextmanager
def tls_postgres_server(tls: ServerCertificate) -> Iterator[str]:
    """A PostgreSQL server of the test's own: a fresh cluster (initdb, trust auth) with ssl = on
    and `tls`'s certificate, on a free 127.0.0.1 port; stopped and deleted afterwards. Yields its
    admin URL."""
    # initdb and postgres refuse to run as root, so as root they run as the postgres user, who
    # cannot enter pytest's root-only tmp dirs: the cluster gets a directory of its own instead.
    owner = "postgres" if os.geteuid() == 0 else None
    home = Path(tempfile.mkdtemp(prefix="inferq-pg-tls-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        certfile = Path(shutil.copy(tls.certfile, home / "server.pem"))
        keyfile = Path(shutil.copy(tls.keyfile, home / "server.key"))
        keyfile.chmod(0o600)  # postgres refuses a key that anyone but its owner can read
        if owner:
            for path in (home, certfile, keyfile):
                shutil.chown(path, owner, owner)
        _initdb(home / "data", owner)
        port = free_port()
        # fmt: off
        server = _start_as(owner, home / "postgres.log", [
            PG_BIN / "postgres", "-D", home / "data", "-c", f"port={port}",
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "ssl=on", "-c", f"ssl_cert_file={certfile}", "-c", f"ssl_key_file={keyfile}",
            "-c", "fsync=off",  # a throwaway cluster needs no durability
        ])
        # fmt: on
        admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        wait_for(
            lambda: _accepts_connections(admin_url, server, home / "postgres.log"),
            30,
            f"the TLS PostgreSQL on port {port} to accept connections",
        )
        yield admin_url
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # fast shutdown: ends open sessions, no waiting
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
        shutil.rmtree(home)


def _initdb(data: Path, owner: str | None) -> None:
    # fmt: off
    command: list[str | Path] = [
        PG_BIN / "initdb", "--pgdata", data, "--username=postgres", "--auth=trust",
        "--no-locale", "--encoding=UTF8", "--no-sync",
    ]
    # fmt: on
    done = subprocess.run(
        command,
        cwd=data.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        user=owner,
        group=owner,
        extra_groups=[] if owner else None,
    )
    assert done.returncode == 0, f"initdb failed:\n{done.stdout}{done.stderr}"


def _start_as(owner: str | None, log_path: Path, args: list[str | Path]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            args,
            cwd=log_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=owner,
            group=owner,
            extra_groups=[] if owner else None,
        )


def _accepts_connections(url: str, server: subprocess.Popen[bytes], log_path: Path) -> bool:
    assert server.poll() is None, f"postgres exited:\n{log_path.read_text()}"
    try:
        psycopg.connect(url, connect_timeout=1).close()
        return True
    except psycopg.OperationalError:
        return False


@dataclass
class Stack:
    """Environment and processes of one distributed inferq deployment under test."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_url: str | None = None

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout.strip()

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`inferq ARGS` in the background, logging to NAME.log; ``env`` adds to the stack's."""
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env={**self.env, **(env or {})},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def start_api(self, *args: str, tls: ServerCertificate | None = None) -> str:
        """`inferq serve` on a free port with extra `args`; over HTTPS when given `tls`."""
        port = free_port()
        if tls is not None:
            args = (*args, "--ssl-certfile", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile))
        self.start("api", "serve", "--port", str(port), *args)
        self.api_url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        verify = tls.client_context() if tls else None
        wait_for(
            lambda: healthy(self.api_url, verify), 60, "the API to answer /healthz", self, "api"
        )
        return self.api_url

    def start_worker(
        self,
        name: str = "worker",
        concurrency: int = 1,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """`inferq worker` (extra ``args``, e.g. ``--tasks langid``), once its models are warm."""
        process = self.start(
            name, "worker", "--pool", "prefork", "--concurrency", str(concurrency), *args, env=env
        )
        wait_for(
            lambda: (
                self.log(name).count('"worker_warm"') >= concurrency and "ready" in self.log(name)
            ),
            180,
            f"{name} to load its model",
            self,
            name,
        )
        return process

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, sig)  # the whole group: main process and pool children
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)


def healthy(url: str | None, verify: ssl.SSLContext | None = None) -> bool:
    try:
        response = httpx.get(f"{url}/healthz", timeout=1, verify=verify or True)
        return response.status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(
    condition: object,
    timeout: float,
    what: str,
    stack: Stack | None = None,
    log_name: str | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    tail = stack.log(log_name)[-3000:] if stack and log_name else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
