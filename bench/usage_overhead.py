"""What recording usage costs a worker: the one ``UPDATE jobs … FROM json_to_recordset`` that
adds a micro-batch's usage to its jobs (``core.jobs.usage.add_usage``), against the whole
record transaction it runs in (results, item states, job settlement, outbox rows).

In process, against a fresh PostgreSQL database on this machine: ``--jobs`` single-input jobs
(the worst case: one usage row per input) of a model that answers at once, claimed and recorded
by ``core.jobs.execute.run_batch`` as a worker does, ``--rounds`` times. Each statement's time is
taken from SQLAlchemy's cursor events; the figures are medians over the rounds.

    python -m bench.usage_overhead --jobs 256 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import event

from bench.common import emit, machine_facts, quiet_logging
from core.broker import RunItems
from core.config import Settings
from core.db.session import Database
from core.inference import registry
from core.inference.engine import InferenceEngine
from core.inference.registry import TaskSpec, TierSpec
from core.inference.types import Prediction
from core.jobs import outbox
from core.jobs.execute import Delivery, Worker, run_batch
from core.jobs.submit import JobRequest, Submission, submit_many
from core.security.tenants import ensure_tenant
from tests.services import fresh_postgres_database


class Instant:
    """A model that costs nothing, so the database's share is all there is."""

    name = "instant"
    version = "instant-1"

    @classmethod
    def load(cls, device: str) -> Instant:
        return cls()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [Prediction(label="positive", score=0.9) for _ in texts]


def one_round(database: Database, settings: Settings, tenant_id: int, jobs: int) -> dict[str, Any]:
    deliveries: list[Delivery] = []

    def hand_to_worker(_app: Any, entries: Sequence[RunItems], **_options: Any) -> None:
        deliveries.extend(Delivery(uuid.UUID(e.job_id), list(e.item_ids)) for e in entries)

    # The relay's send, replaced: this process is the worker (no broker in the measurement).
    outbox.send_run_items = hand_to_worker  # type: ignore[attr-defined,assignment]
    submissions = [
        Submission(tenant_id, JobRequest("instant", [f"text {uuid.uuid4().hex}"]))
        for _ in range(jobs)
    ]
    with database.transaction() as session:
        submit_many(session, settings, submissions)
    timings: list[tuple[str, float]] = []
    started: dict[int, float] = {}

    def before(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        started[id(cursor)] = time.perf_counter()

    def after(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        timings.append((statement, time.perf_counter() - started.pop(id(cursor))))

    event.listen(database.engine, "before_cursor_execute", before)
    event.listen(database.engine, "after_cursor_execute", after)
    try:
        began = time.perf_counter()
        report = run_batch(Worker(database, InferenceEngine(device="cpu"), settings), deliveries)
        batch_seconds = time.perf_counter() - began
    finally:
        event.remove(database.engine, "before_cursor_execute", before)
        event.remove(database.engine, "after_cursor_execute", after)
    assert report.written == jobs, report
    usage = sum(s for text, s in timings if "usage_inputs=(jobs.usage_inputs" in text)
    return {"usage_update_ms": 1000 * usage, "batch_ms": 1000 * batch_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    quiet_logging()
    spec = TaskSpec("instant", "bench double", (TierSpec("primary", f"{__name__}:Instant"),))
    registry.TASKS["instant"] = spec
    with fresh_postgres_database("inferq_bench") as url:
        from tests.conftest import migrated

        database = migrated(url)
        settings = Settings(database_url=url, chunk_size=args.jobs)
        with database.transaction() as session:
            tenant_id = ensure_tenant(session, "bench").id
        one_round(database, settings, tenant_id, args.jobs)  # warm: connections, plans
        rounds = [one_round(database, settings, tenant_id, args.jobs) for _ in range(args.rounds)]
        database.engine.dispose()
    usage_ms = statistics.median(r["usage_update_ms"] for r in rounds)
    batch_ms = statistics.median(r["batch_ms"] for r in rounds)
    emit(
        "usage_overhead",
        params=vars(args),
        machine=machine_facts(),
        results={"usage_update_ms": usage_ms, "batch_ms": batch_ms, "rounds": rounds},
        targets={},
        table=[
            ("single-input jobs per batch", args.jobs),
            ("usage UPDATE, ms (median)", f"{usage_ms:.2f}"),
            ("whole run_batch, ms (median)", f"{batch_ms:.1f}"),
            ("share of the batch", f"{usage_ms / batch_ms:.1%}"),
        ],
    )


if __name__ == "__main__":
    main()
