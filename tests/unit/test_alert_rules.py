"""The alert rules, proven with Prometheus' own tool: `promtool check` accepts the rules and the
scrape configuration, and `promtool test rules` replays the series in tests/prometheus/ through
every alert. promtool comes from Debian's `prometheus` package (.ci/run installs it); without it
these tests fail rather than skip, because untested alerts are the ones that page nobody."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool not found: apt-get install -y --no-install-recommends prometheus "
            "(.ci/run does this in CI)"
        )
    return subprocess.run(
        [binary, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_accepts_the_alert_rules() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_accepts_the_scrape_configuration_and_its_rule_files() -> None:
    done = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_fire_and_stay_quiet_as_their_unit_tests_expect() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


@cache
def alert_names() -> tuple[str, ...]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return tuple(rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule)


@cache
def rule_test_cases() -> dict[str, dict[str, int]]:
    """alert name -> how many cases expect it to fire ("firing") and to stay quiet ("quiet")."""
    tests: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"firing": 0, "quiet": 0})
    for test in tests:
        for case in test.get("alert_rule_test", []):
            counts[case["alertname"]]["firing" if case.get("exp_alerts") else "quiet"] += 1
    return dict(counts)


def test_the_unit_tests_load_the_deployed_rule_file() -> None:
    rule_files = yaml.safe_load(RULE_TESTS.read_text())["rule_files"]
    assert [(RULE_TESTS.parent / path).resolve() for path in rule_files] == [ALERTS]


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_has_a_firing_case_and_a_quiet_case(alert: str) -> None:
    cases = rule_test_cases().get(alert, {"firing": 0, "quiet": 0})
    assert cases["firing"] >= 1, f"no promtool case shows {alert} firing"
    assert cases["quiet"] >= 1, f"no promtool case shows {alert} staying quiet"


def test_unit_tests_name_only_alerts_that_exist() -> None:
    unknown = set(rule_test_cases()) - set(alert_names())
    assert not unknown, f"tests/prometheus expects alerts that alerts.yml lacks: {unknown}"
