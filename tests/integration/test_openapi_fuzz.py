"""Schemathesis against a live deployment (PostgreSQL, Redis, `inferq serve|worker|beat`): every
operation of the API's own /openapi.json, called with an API key, through the examples,
coverage, fuzzing and stateful phases (the stateful one follows the schema's links: a job or a
batch is created, then read, cancelled, redelivered). No response may be a 5xx or differ from
the schema, and every 4xx must be problem+json whose ``status`` is the HTTP status.

The schemathesis CLI runs it, as CI would: openapi_fuzz.toml is the configuration (checks,
seed, volume), openapi_fuzz_hooks.py the custom check and the NDJSON codec. (Not schemathesis's
pytest loader: ``from_fixture`` fails under pytest 9, whose nodes no longer have ``_nodeid``.)
The run is derandomized; the test prints how many cases it ran (``-s`` shows it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from tests.integration.conftest import Deployment, deployed

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "openapi_fuzz.toml"
HOOKS = HERE / "openapi_fuzz_hooks.py"
REDIS_DB = 15  # every integration module has its own (9 to 14 are taken)
RUN_TIMEOUT_SECONDS = 240
# The task the config's dictionary names: a fake model, so a worker starts and answers at once.
TASKS = {"fast": {"chain": [{"tier": "primary", "adapter": "tests.fakes:Healthy"}]}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    env = {
        "INFERQ_TASKS": json.dumps(TASKS),
        "INFERQ_WARM_TASKS": json.dumps(list(TASKS)),
        # Long polls (GET ?wait=, Prefer: wait=) hold at most a second, not the default 30.
        "INFERQ_MAX_WAIT_SECONDS": "1",
        "INFERQ_RATE_LIMITS": "",  # no rate limits: the fuzzer calls as fast as it can
    }
    with deployed(tmp_path_factory.mktemp("fuzz"), REDIS_DB, **env) as running:
        yield running


def run_schemathesis(
    live: Deployment, workdir: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = workdir / "report.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{live.stack.api_url}/openapi.json",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    env = {
        **os.environ,
        "INFERQ_FUZZ_API_KEY": live.key,
        "SCHEMATHESIS_HOOKS": str(HOOKS),
        "NO_COLOR": "1",
    }
    # In a scratch directory: Hypothesis keeps files in the working directory.
    done = subprocess.run(
        command,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    return done, json.loads(report.read_text()) if report.exists() else {}


def test_the_live_schema_is_valid_openapi(live: Deployment) -> None:
    # The run below reports operations it cannot use, but not every flaw of the document (a
    # link's operationRef that is not a URI reference, say); clients' generators would choke.
    schemathesis.openapi.from_url(f"{live.stack.api_url}/openapi.json").validate()


@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 120)  # the run, and the deployment when run alone
def test_every_operation_answers_as_its_schema_says(live: Deployment, tmp_path: Path) -> None:
    started = time.monotonic()
    done, report = run_schemathesis(live, tmp_path)
    elapsed = time.monotonic() - started

    cases = report.get("test_cases", {})
    operations = report.get("operations", {})
    links = next(
        (" ".join(line.split()) for line in done.stdout.splitlines() if "API Links:" in line), ""
    )
    print(
        f"\nschemathesis: {cases.get('generated', 0)} cases over "
        f"{operations.get('tested', 0)}/{operations.get('total', 0)} operations "
        f"({links or 'no stateful phase'}), {cases.get('with_failures', 0)} failing, "
        f"{len(report.get('errors', []))} errors, in {elapsed:.0f} s"
    )
    assert done.returncode == 0, (
        f"schemathesis failed:\n{done.stdout[-20000:]}{done.stderr[-5000:]}"
    )
    assert operations.get("tested") == operations.get("total"), done.stdout[-5000:]
