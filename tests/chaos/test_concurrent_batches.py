"""Two pool processes forming batches from many jobs at once must all finish promptly with no
database deadlock. The 10,000-text benchmark once hit lock-order deadlocks (batches locking the
same jobs in different orders; the failed batches' items then waited for the sweeper); every
writer now locks jobs in id order. This test is a liveness check: deadlocks are timing
dependent, and it did not reproduce that one reliably without the fix."""

from __future__ import annotations

import uuid

import httpx
import pytest

pytestmark = pytest.mark.chaos


def test_parallel_batches_over_shared_jobs_finish_without_deadlocks(stack_factory: object) -> None:
    stack = stack_factory(INFERQ_CHUNK_SIZE="4")  # type: ignore[operator]
    key = stack.run("keys", "create", "parallel")
    api = stack.start_api()
    stack.start_worker("worker", concurrency=2)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api, headers=headers, timeout=60) as client:
        jobs = [
            # Alternating priorities: batches take interactive messages first, so two batches
            # meet the same jobs in different orders, the recipe for a lock-order deadlock.
            client.post(
                "/v1/jobs",
                json={
                    "task": "sentiment",
                    "priority": ("bulk", "interactive")[j % 2],
                    "inputs": [
                        f"an ordinary film review number {j}-{i} {uuid.uuid4()}" for i in range(24)
                    ],
                },
            ).json()["id"]
            for j in range(16)
        ]
        finished = [client.get(f"/v1/jobs/{job}", params={"wait": 30}).json() for job in jobs]

    log = stack.log("worker")
    assert [job["status"] for job in finished] == ["succeeded"] * len(jobs)
    assert "deadlock" not in log.lower()
    assert log.count('"batch_done"') >= 2
