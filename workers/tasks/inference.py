"""The inference task: micro-batches of run-items messages, a thin wrapper around
``core.jobs.execute.run_batch``."""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from core.broker import RUN_ITEMS, run_items_of
from core.config import get_settings
from core.jobs import execute
from workers import runtime
from workers.app import celery_app
from workers.batching import TokenBudgetBatches

_policies = get_settings().batching


@celery_app.task(  # type: ignore[untyped-decorator]
    base=TokenBudgetBatches,
    name=RUN_ITEMS,
    policies=_policies,
    # Our own item and token counts decide a full batch; this is only a backstop.
    flush_every=10_000,
    flush_interval=min(policy.max_wait_ms for policy in _policies.values()) / 1000,
)
def run_items(requests: list[Any]) -> int:
    deliveries = [
        execute.Delivery(uuid.UUID(entry.job_id), entry.item_ids, entry.request_id)
        for request in requests
        for entry in run_items_of(request.args, request.kwargs or {})
    ]
    request_ids = sorted({d.request_id for d in deliveries if d.request_id})
    with structlog.contextvars.bound_contextvars(request_ids=request_ids):
        report = execute.run_batch(runtime.worker(), deliveries)
    return report.written
