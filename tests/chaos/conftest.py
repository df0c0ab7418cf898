"""Chaos fixtures: services of the scenario's own (``services``, ``chaos_stack``) and the
summary of what every scenario measured, written to ``var/chaos-summary.json`` and printed at
the end of the session."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.infra import OwnServices, own_services
from tests.chaos.scale import FIGURES, SCALE
from tests.conftest import stack_env
from tests.services import REPO, Stack

SUMMARY = REPO / "var" / "chaos-summary.json"


@pytest.fixture
def services() -> Iterator[OwnServices]:
    """A PostgreSQL cluster and a Redis of this test's own, free to be killed and restarted."""
    with own_services() as running:
        yield running


@pytest.fixture
def chaos_stack(
    services: OwnServices, tmp_path: Path
) -> Iterator[Callable[..., tuple[Stack, str]]]:
    """``chaos_stack(**env)``: a migrated inferq deployment on ``services`` and its database
    URL; every process it started is stopped afterwards."""
    stacks: list[Stack] = []

    def make(**env: str) -> tuple[Stack, str]:
        stack = Stack(stack_env(services.pg_url, services.redis_url, tmp_path, **env), tmp_path)
        stacks.append(stack)
        stack.run("db", "upgrade")
        return stack, services.pg_url

    yield make
    for stack in stacks:
        stack.stop_all()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not FIGURES:
        return
    summary = {
        "scale": SCALE,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scenarios": FIGURES,
    }
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")
    terminalreporter.write_sep("-", f"chaos summary (also in {SUMMARY.relative_to(REPO)})")
    terminalreporter.write_line(json.dumps(summary, indent=2))
