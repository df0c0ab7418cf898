"""The Celery worker: task bodies registered on the one app from ``core.broker``.

Models load in the process that serves them: in each pool child after fork (worker_process_init)
or, for the solo/threads pools, in the worker process itself — CUDA is never touched before a fork.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_ready

from core.broker import get_celery
from core.config import get_settings
from core.telemetry.logging import configure_logging
from workers import runtime

celery_app = get_celery()
celery_app.conf.include = [
    "workers.tasks.inference",
    "workers.tasks.maintenance",
    "workers.tasks.webhooks",
]
celery_app.loader.import_default_modules()

log = structlog.get_logger(__name__)


def warm_up() -> None:
    """Load what can load; a tier that cannot (no torch or transformers here) is logged as
    unavailable and its tasks run on the rest of their chain."""
    settings = get_settings()
    threads = _set_torch_threads(settings.torch_threads, settings.resolved_worker_concurrency)
    unavailable = runtime.engine().warm_up(settings.warm_tasks)
    log.info(
        "worker_warm",
        device=settings.device,
        torch_threads=threads,
        unavailable=unavailable or None,
    )


def _set_torch_threads(configured: int | None, concurrency: int) -> int | None:
    try:
        import torch
    except ImportError:  # a worker without the `model` extra: its torch tiers are unavailable
        return None
    # Each pool process gets its share of the cores: oversubscribed threads thrash.
    threads = configured or max(1, (os.cpu_count() or 1) // concurrency)
    torch.set_num_threads(threads)
    return threads


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _init_child(**_: Any) -> None:
    settings = get_settings()
    if not settings.embedded:  # embedded: the host command already chose its logging
        configure_logging(settings.log_level, settings.log_format)
    runtime.reset()
    try:
        warm_up()
    except Exception:  # a pool child that dies here is respawned to die again: serve lazily
        log.exception("worker_warm_failed")


@worker_init.connect  # type: ignore[untyped-decorator]
def _serve_metrics(**_: Any) -> None:
    """Serve the metrics of every pool process from the main process (prometheus multiprocess)."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(get_settings().metrics_port, registry=registry)


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _child_gone(pid: int | None = None, **_: Any) -> None:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ and pid:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


@worker_ready.connect  # type: ignore[untyped-decorator]
def _ready(sender: Any = None, **_: Any) -> None:
    pool = getattr(getattr(sender, "pool_cls", None), "__name__", "")
    log.info("worker_ready", pool=str(pool))
