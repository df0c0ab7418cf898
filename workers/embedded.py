"""Embedded mode: the same Celery worker and beat schedule, in threads of the current process.

With the in-memory transport there is no broker process, so the worker (solo pool) and beat run
beside the API or the ``process`` command. They run the very tasks a distributed worker runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery.beat import EmbeddedService
from celery.worker import state as worker_state

from core.broker import all_queues
from core.config import get_settings
from workers.app import celery_app

STARTUP_TIMEOUT_SECONDS = 30.0
SHUTDOWN_TIMEOUT_SECONDS = 30.0


@contextmanager
def running_worker(data_dir: Path, *, with_beat: bool = True) -> Iterator[None]:
    ready = threading.Event()
    worker = celery_app.WorkController(
        app=celery_app,
        concurrency=1,
        pool="solo",
        hostname="embedded@localhost",
        # Every queue, dedicated task queues too: this one worker serves every task.
        queues=list(all_queues(get_settings())),
        ready_callback=lambda _consumer: ready.set(),
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
    )
    thread = threading.Thread(target=worker.start, name="inferq-worker", daemon=True)
    thread.start()
    if not ready.wait(STARTUP_TIMEOUT_SECONDS):
        raise RuntimeError("the embedded worker did not start")
    beat = None
    if with_beat:
        data_dir.mkdir(parents=True, exist_ok=True)
        beat = EmbeddedService(
            celery_app, thread=True, schedule_filename=str(data_dir / "celerybeat-schedule")
        )
        beat.start()
    try:
        yield
    finally:
        if beat is not None:
            beat.stop()
        # The documented way to stop a worker running in a thread (see celery.contrib.testing).
        worker_state.should_terminate = 0
        thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        worker_state.should_terminate = None
