"""One distributed deployment per module: PostgreSQL, Redis, and `inferq serve`, `inferq worker`
and `inferq beat` as separate processes, exactly as the README starts them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import stack_env
from tests.services import Stack, fresh_postgres_database, fresh_redis_db


@dataclass
class Deployment:
    stack: Stack
    key: str
    other_key: str

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.Client(base_url=self.stack.api_url or "", headers=headers, timeout=60)


@contextmanager
def deployed(data_dir: Path, redis_db: int, **env: str) -> Iterator[Deployment]:
    with fresh_postgres_database() as pg_url, fresh_redis_db(redis_db) as redis_url:
        stack = Stack(stack_env(pg_url, redis_url, data_dir, **env), data_dir)
        try:
            stack.run("db", "upgrade")
            key = stack.run("keys", "create", "alice")
            other_key = stack.run("keys", "create", "bob")
            stack.start_api()
            stack.start("beat", "beat")
            stack.start_worker()
            yield Deployment(stack, key, other_key)
        finally:
            stack.stop_all()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("deployment"), 12) as running:
        yield running
