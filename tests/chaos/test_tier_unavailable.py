"""A worker installed without the `model` extra: its primary sentiment tier cannot import
transformers. Reported as "No module named 'transformers'" in the pool child and a job left
`running` for good while beat was not running. The job must finish on the fallback tier
(degraded), with no beat (no sweeper to rescue it), and the worker log, /readyz and /v1/models
must say plainly which tier is down."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.scale import record_figures
from tests.services import Stack, wait_for

pytestmark = pytest.mark.chaos

MISSING = "No module named 'transformers'"
INPUTS = [f"{'a good' if i % 2 else 'a dull'} film, take {i}" for i in range(12)]


def shadow_transformers(root: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes `import transformers` fail as if uninstalled."""
    package = root / "no-model-extra" / "transformers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"raise ModuleNotFoundError({MISSING!r}, name='transformers')\n"
    )
    return package.parent


def wait_finished(client: httpx.Client, job_id: str, stack: Stack) -> dict[str, Any]:
    finished: dict[str, Any] = {}

    def done() -> bool:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 5}).json()
        finished.update(job)
        return job["status"] not in ("queued", "running")

    wait_for(done, 180, f"job {job_id} to finish without beat", stack, "worker")
    return finished


def fallbacks_unavailable(stack: Stack) -> float:
    """inferq_fallbacks_total{task="sentiment",tier="primary",reason="unavailable"}, as the
    worker's main process serves it for its pool children."""
    port = stack.env["INFERQ_METRICS_PORT"]
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    wanted = ('task="sentiment"', 'tier="primary"', 'reason="unavailable"')
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith("inferq_fallbacks_total{") and all(label in line for label in wanted)
    )


def test_a_worker_without_transformers_finishes_jobs_on_the_fallback_tier_without_beat(
    chaos_stack: Any, tmp_path: Path
) -> None:
    shadow = shadow_transformers(tmp_path)
    python_path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    stack: Stack
    stack, _ = chaos_stack(PYTHONPATH=python_path)
    key = stack.run("keys", "create", "no-model-extra")
    api = stack.start_api()
    stack.start_worker()  # no beat: nothing but the worker itself can finish the job

    with httpx.Client(
        base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        submitted = time.monotonic()
        created = client.post("/v1/jobs", json={"task": "sentiment", "inputs": INPUTS})
        assert created.status_code == 202, created.text
        job = wait_finished(client, created.json()["id"], stack)
        seconds = time.monotonic() - submitted
        ready = client.get("/readyz")
        models = {m["task"]: m for m in client.get("/v1/models").json()["data"]}

    results = job.get("results") or []
    tiers = Counter(result["tier"] for result in results)
    record_figures(
        "tier_unavailable",
        items=len(INPUTS),
        status=job["status"],
        seconds_submit_to_finished=round(seconds, 2),
        tiers=dict(tiers),
        degraded=sum(1 for result in results if result["degraded"]),
        beat_running=False,
    )

    assert job["status"] == "succeeded", job
    assert len(results) == len(INPUTS)
    assert all(r["tier"] == "fallback" and r["degraded"] is True for r in results), results

    worker_log = stack.log("worker")
    down = [line for line in worker_log.splitlines() if '"tier_unavailable"' in line]
    assert down, worker_log[-3000:]
    entry = json.loads(down[0][down[0].index("{") :])
    assert (entry["task"], entry["tier"], entry["error"]) == ("sentiment", "primary", MISSING)
    assert entry["level"] == "error"

    assert ready.status_code == 200, ready.text  # degraded, still serving
    assert ready.json()["status"] == "degraded"
    assert ready.json()["tiers"] == {"sentiment:primary": f"unavailable: {MISSING}"}
    availability = {t["tier"]: t["availability"] for t in models["sentiment"]["chain"]}
    assert availability == {
        "primary": f"unavailable: {MISSING}",
        "fallback": "ok",
        "rules": "ok",
    }
    assert fallbacks_unavailable(stack) >= len(INPUTS)
