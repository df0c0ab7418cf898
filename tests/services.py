"""Real services for integration tests: a fresh PostgreSQL database, a Redis db, and inferq
processes (API, worker, beat) started exactly as a user starts them, with ``inferq ...``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def start_api(self) -> str:
        port = free_port()
        self.start("api", "serve", "--port", str(port))
        self.api_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(self.api_url), 60, "the API to answer /healthz", self, "api")
        return self.api_url

    def start_worker(self, name: str = "worker", concurrency: int = 1) -> subprocess.Popen[bytes]:
        process = self.start(name, "worker", "--pool", "prefork", "--concurrency", str(concurrency))
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


def healthy(url: str | None) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
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
