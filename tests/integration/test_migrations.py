"""Alembic migrations run up, down and up again on both SQLite and PostgreSQL, and leave a schema
that matches the models exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from core.db.models import Base
from core.db.session import make_engine

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TABLES = {"tenants", "api_keys", "jobs", "job_items", "results", "outbox"}


def _config(url: str) -> Config:
    config = Config(str(REPO / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    return config


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


def test_upgrade_creates_a_schema_identical_to_the_models(database_url: str) -> None:
    command.upgrade(_config(database_url), "head")
    engine = make_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        tables = set(inspect(connection).get_table_names())
    engine.dispose()

    assert differences == []
    assert tables >= TABLES


def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    config = _config(database_url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    engine = make_engine(database_url)
    with engine.connect() as connection:
        emptied = set(inspect(connection).get_table_names()) & TABLES
    command.upgrade(config, "head")
    with engine.connect() as connection:
        restored = set(inspect(connection).get_table_names())
    engine.dispose()

    assert emptied == set()
    assert restored >= TABLES
