"""Periodic tasks (Celery beat): the outbox relay and the sweeper."""

from __future__ import annotations

from core.broker import RELAY_OUTBOX, SWEEP
from core.jobs import outbox, sweeper
from core.telemetry.metrics import RELAYED, SWEPT
from workers import runtime
from workers.app import celery_app


@celery_app.task(name=RELAY_OUTBOX)  # type: ignore[untyped-decorator]
def relay_outbox() -> int:
    with runtime.database().transaction() as session:
        sent = outbox.relay(session)
    RELAYED.inc(sent)
    return sent


@celery_app.task(name=SWEEP)  # type: ignore[untyped-decorator]
def sweep() -> dict[str, int]:
    with runtime.database().transaction() as session:
        report = sweeper.sweep(session, runtime.settings())
    SWEPT.labels("redispatched").inc(report.redispatched)
    SWEPT.labels("failed").inc(report.failed)
    return {"redispatched": report.redispatched, "failed": report.failed}
