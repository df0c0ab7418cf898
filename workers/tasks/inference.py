"""The inference task: a thin wrapper around ``core.jobs.execute.run_items``."""

from __future__ import annotations

import uuid

from core.broker import RUN_ITEMS
from core.jobs import execute
from core.telemetry.logging import bound_request_id
from workers import runtime
from workers.app import celery_app


@celery_app.task(name=RUN_ITEMS)  # type: ignore[untyped-decorator]
def run_items(job_id: str, item_ids: list[int], request_id: str | None = None) -> int:
    with bound_request_id(request_id):
        report = execute.run_items(
            runtime.database(), runtime.engine(), runtime.settings(), uuid.UUID(job_id), item_ids
        )
    return report.written
