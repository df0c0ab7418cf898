"""``inferq usage``: what each tenant's jobs used, per task, and what that cost."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.config import get_settings
from core.db.session import Database
from core.errors import InferqError
from core.telemetry.logging import configure_logging

if TYPE_CHECKING:
    from core.jobs.usage import UsageRow


def usage(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    since: Annotated[str, typer.Option(help="Jobs created in this window (30m, 24h, 7d).")] = "7d",
) -> None:
    """Per tenant and task: inputs, cache hit rate, model-seconds and cost per 1,000
    predictions (model-seconds priced by INFERQ_COST_PER_WORKER_HOUR, and
    INFERQ_COST_PER_GPU_WORKER_HOUR for seconds on GPU workers)."""
    from datetime import timedelta

    from core.db.models import utcnow
    from core.durations import duration_seconds
    from core.jobs.usage import usage_report, with_tenant_totals

    settings = get_settings()
    configure_logging("WARNING", settings.log_format)
    try:
        window = timedelta(seconds=duration_seconds(since, "--since"))
    except InferqError as exc:
        raise typer.BadParameter(exc.detail, param_hint="--since") from exc
    with Database(settings.resolved_database_url).read() as session:
        rows = usage_report(session, settings, tenant=tenant, since=utcnow() - window)
    Console(width=160).print(_table(with_tenant_totals(rows), since))


def _table(rows: list[UsageRow], since: str) -> Table:
    table = Table(
        "tenant",
        "task",
        "jobs",
        "inputs",
        "cache hit rate",
        "tokens (est.)",
        "model-seconds",
        "cost",
        "cost / 1k predictions",
        title=f"inferq usage, jobs of the last {since}",
    )
    for row in rows:
        hit_rate, per_1000 = row.cache_hit_rate, row.cost_per_1000
        table.add_row(
            row.tenant,
            row.task,
            f"{row.jobs:,}",
            f"{row.usage.inputs:,}",
            "-" if hit_rate is None else f"{hit_rate:.1%}",
            f"{row.usage.tokens:,}",
            f"{row.usage.model_seconds:,.3f}",
            f"{row.cost:.6f}",
            "-" if per_1000 is None else f"{per_1000:.6f}",
        )
    if not rows:
        table.caption = "no jobs in this window"
    return table
