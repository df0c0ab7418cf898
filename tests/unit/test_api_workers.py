"""How many API processes `inferq serve` starts when not told (pure unit test: settings only)."""

from __future__ import annotations

import pytest

from core.config import Settings

DISTRIBUTED = {
    "database_url": "postgresql+psycopg://postgres@127.0.0.1/x",
    "broker_url": "redis://127.0.0.1:6379/0",
}


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (4, 2), (8, 4), (64, 4)])
def test_distributed_mode_runs_half_the_cores_at_most_four(
    monkeypatch: pytest.MonkeyPatch, cores: int, expected: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert Settings(**DISTRIBUTED).resolved_api_workers == expected


def test_embedded_mode_runs_one_process_and_a_setting_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert Settings().resolved_api_workers == 1
    assert Settings(**DISTRIBUTED, api_workers=3).resolved_api_workers == 3
