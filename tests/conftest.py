from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import get_settings
from core.db.session import Database
from tests.services import (
    Stack,
    free_port,
    fresh_postgres_database,
    fresh_redis_db,
    service_up,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `models train --arch` logs to MLflow by default (var/mlflow.db): tests that train would fill the
# developer's store. Tests of tracking turn it on with a store of their own.
os.environ["INFERQ_TRACKING"] = "false"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Fail loudly rather than skip: integration tests that cannot reach their services are broken.
    needs_services = any(
        item.get_closest_marker("integration") or item.get_closest_marker("chaos") for item in items
    )
    if needs_services:
        missing = [
            name
            for name, port in (("PostgreSQL", 5432), ("Redis", 6379))
            if not service_up("127.0.0.1", port)
        ]
        if missing:
            raise pytest.UsageError(f"integration tests need {', '.join(missing)} on 127.0.0.1")


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    from core.broker import get_celery
    from core.inference.registry import tier_version

    caches = (get_settings, get_celery, tier_version)
    for cached in caches:
        cached.cache_clear()
    yield
    for cached in caches:
        cached.cache_clear()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'inferq.db'}"


@pytest.fixture
def redis_url() -> Iterator[str]:
    with fresh_redis_db(13) as url:
        yield url


def migrated(url: str) -> Database:
    from cli.main import upgrade_database
    from core.config import Settings

    upgrade_database(Settings(database_url=url))
    return Database(url)


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[Database]:
    database = migrated(pg_url)
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(sqlite_url: str) -> Iterator[Database]:
    database = migrated(sqlite_url)
    yield database
    database.dispose()


def stack_env(pg_url: str, redis_url: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "INFERQ_DATABASE_URL": pg_url,
        "INFERQ_BROKER_URL": redis_url,
        "INFERQ_DATA_DIR": str(data_dir),
        "INFERQ_LOG_LEVEL": "INFO",
        "INFERQ_DEVICE": "cpu",
        "INFERQ_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "INFERQ_METRICS_PORT": str(free_port()),
        "INFERQ_SECRET_KEY": "integration-tests-secret-key",
        # Tests of other things send bursts one tenant's default budget would refuse;
        # tests/integration/test_security.py sets its own.
        "INFERQ_RATE_LIMITS": "",
    }
    env.update(overrides)
    return env


@pytest.fixture
def stack_factory(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[object]:
    stacks: list[Stack] = []

    def make(**overrides: str) -> Stack:
        stack = Stack(stack_env(pg_url, redis_url, tmp_path, **overrides), tmp_path)
        stack.run("db", "upgrade")
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop_all()
