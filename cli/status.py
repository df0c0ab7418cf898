"""``inferq status [--watch]``: queues, backlog, throughput, tiers, circuits, drift, webhooks and
workers in one terminal view (rich), refreshed every second; embedded or distributed mode."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from core.config import get_settings
from core.telemetry.logging import configure_logging


def status(
    watch: Annotated[bool, typer.Option(help="Refresh every --interval until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 1.0,
    count: Annotated[
        int | None, typer.Option(min=1, help="With --watch: stop after this many refreshes.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One snapshot as JSON.")] = False,
) -> None:
    """What the platform is doing now. Rates need two readings: without --watch the view
    takes two, --interval apart."""
    from core.db.session import Database
    from core.telemetry.status import StatusReader

    settings = get_settings()
    configure_logging("WARNING", settings.log_format)
    reader = StatusReader(settings, Database(settings.resolved_database_url))
    if not watch:
        reader.read()
        time.sleep(interval)
        snapshot = reader.read()
        if as_json:
            typer.echo(json.dumps(asdict(snapshot), default=str))
        else:
            Console().print(render(snapshot))
        return
    refreshes = 0
    with Live(render(reader.read()), console=Console(), auto_refresh=False) as live:
        try:
            while count is None or refreshes < count:
                time.sleep(interval)
                live.update(render(reader.read()), refresh=True)
                refreshes += 1
        except KeyboardInterrupt:
            pass


def render(snapshot: object) -> Group:
    from core.telemetry.status import Snapshot

    assert isinstance(snapshot, Snapshot)
    title = f"inferq status ({snapshot.mode}) at {snapshot.taken_at:%H:%M:%S} UTC"
    backlog = Table("task", "priority", "items", "oldest (s)", "backlog (s)", "done/s", title=title)
    for row in snapshot.backlog:
        backlog.add_row(
            row.task,
            row.priority,
            f"{row.items:,}",
            f"{row.oldest_seconds:.0f}",
            f"{row.backlog_seconds:.0f}",
            _rate(row.finished_per_second),
        )
    tiers = Table("task", "tier", "served/s", "circuit", title="tiers")
    for tier in snapshot.tiers:
        circuit = tier.circuit if tier.circuit == "closed" else f"[red]{tier.circuit}[/red]"
        tiers.add_row(tier.task, tier.tier, _rate(tier.served_per_second), circuit)
    parts: list[Table | str] = [backlog, tiers]
    if snapshot.queues:
        queues = Table("queue", "messages", title="broker")
        for name, length in snapshot.queues.items():
            queues.add_row(name, f"{length:,}")
        parts.append(queues)
    if snapshot.drift:
        drift = Table("task", "drifted", "window", "signals", title="drift")
        for flagged in snapshot.drift:
            flag = "[red]yes[/red]" if flagged.drifted else "no"
            drift.add_row(flagged.task, flag, str(flagged.window), flagged.signals)
        parts.append(drift)
    failed = snapshot.webhooks_failed_last_hour
    parts.append(
        f"webhooks: {snapshot.webhook_backlog:,} waiting, "
        + (
            f"[red]{failed:,} failed in the last hour[/red]"
            if failed
            else "none failed in the last hour"
        )
    )
    parts.append(_workers(snapshot.workers, snapshot.mode))
    parts += [f"[yellow]{problem}[/yellow]" for problem in snapshot.problems]
    return Group(*parts)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _workers(workers: list[str] | None, mode: str) -> str:
    if mode == "embedded":
        return "workers: the embedded worker runs inside `inferq serve` / `inferq process`"
    if workers is None:
        return "workers: not asked yet"
    if not workers:
        return "[red]workers: none answered a ping[/red]"
    return f"workers ({len(workers)}): {', '.join(workers)}"
