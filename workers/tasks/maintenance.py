"""Periodic tasks (Celery beat): the outbox relay, the sweeper, the batch dispatcher and the
nightly inbox."""

from __future__ import annotations

from core.broker import DISPATCH_BATCHES, NIGHTLY_COLLECT, NIGHTLY_SCAN, RELAY_OUTBOX, SWEEP
from core.jobs import batches, nightly, outbox, sweeper
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
    """Re-drive lost or abandoned items; expire batches past their completion window."""
    with runtime.database().transaction() as session:
        report = sweeper.sweep(session, runtime.settings())
    SWEPT.labels("redispatched").inc(report.redispatched)
    SWEPT.labels("failed").inc(report.failed)
    return {
        "redispatched": report.redispatched,
        "failed": report.failed,
        "expired_batches": report.expired_batches,
    }


@celery_app.task(name=DISPATCH_BATCHES)  # type: ignore[untyped-decorator]
def dispatch_batches() -> int:
    with runtime.database().transaction() as session:
        return batches.dispatch(session, runtime.settings())


@celery_app.task(name=NIGHTLY_SCAN)  # type: ignore[untyped-decorator]
def nightly_scan() -> list[str]:
    picked = nightly.scan(runtime.database(), runtime.settings())
    return [f"{p.file}: {p.batch_id or p.error}" for p in picked]


@celery_app.task(name=NIGHTLY_COLLECT)  # type: ignore[untyped-decorator]
def nightly_collect() -> list[str]:
    return [str(path) for path in nightly.collect(runtime.database(), runtime.settings())]
