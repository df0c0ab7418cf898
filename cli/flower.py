"""``inferq flower``: Flower, Celery's monitoring UI, against the configured broker.

Flower watches the workers through Celery events (``worker_send_task_events`` is on in
core.broker) and serves Prometheus metrics on ``/metrics`` (``flower_worker_online``,
``flower_events_total``, ...). Its login is HTTP basic auth: ``INFERQ_FLOWER_BASIC_AUTH``
(``user:password``) is handed to Flower as its own ``FLOWER_BASIC_AUTH`` variable, so the password
never appears on a command line (``ps``). ``/metrics`` and ``/healthcheck`` stay open for scrapes
and probes; the UI and the HTTP API (``/api/workers``) ask for the login.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

from core.config import get_settings
from core.telemetry.logging import configure_logging

console = Console(stderr=True)


def flower(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5555,
    address: Annotated[
        str, typer.Option(help="Interface to bind (0.0.0.0 in a container).")
    ] = "127.0.0.1",
    purge_offline_workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seconds after which a worker that went offline leaves the UI and /metrics "
            "(scaled-down pods would otherwise stay listed as offline for ever).",
        ),
    ] = 300,
) -> None:
    """Run Flower (Celery monitoring UI and /metrics) on INFERQ_BROKER_URL; login from
    INFERQ_FLOWER_BASIC_AUTH."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.embedded:
        # The in-memory transport lives inside one process: Flower would watch an empty broker.
        raise typer.BadParameter(
            "Flower needs distributed mode: set INFERQ_BROKER_URL to the workers' Redis"
        )
    if settings.flower_basic_auth:
        os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    elif not os.environ.get("FLOWER_BASIC_AUTH"):
        console.print(
            "[yellow]no INFERQ_FLOWER_BASIC_AUTH: the UI is open to anyone who can reach "
            f"{address}:{port} and its HTTP API refuses every request[/yellow]"
        )
    from core.broker import get_celery

    get_celery().start(
        [
            "flower",
            f"--address={address}",
            f"--port={port}",
            f"--purge_offline_workers={purge_offline_workers}",
        ]
    )
