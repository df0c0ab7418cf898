"""The one Celery app, configured here so that every door can send tasks by name.

The API and producers only *send* (``send_task`` by name), so they need this configuration but
never import ``workers``; the worker registers the task bodies on this same app.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.schedules import crontab
from kombu import Queue  # type: ignore[attr-defined]

from core.config import Settings, get_settings

RUN_ITEMS = "inferq.run_items"
RELAY_OUTBOX = "inferq.relay_outbox"
SWEEP = "inferq.sweep"
DELIVER_WEBHOOK = "inferq.deliver_webhook"
DISPATCH_WEBHOOKS = "inferq.dispatch_webhooks"
DISPATCH_BATCHES = "inferq.dispatch_batches"
NIGHTLY_SCAN = "inferq.nightly_scan"
NIGHTLY_COLLECT = "inferq.nightly_collect"

QUEUES = ("interactive", "bulk")
MAINTENANCE_QUEUE = "maintenance"
# Deliveries wait on receivers for up to 15 s each: their own queue and workers, so webhook
# sending never holds up inference.
WEBHOOKS_QUEUE = "webhooks"


def run_queue(priority: str, task: str | None, settings: Settings) -> str:
    """The queue a run-items message of ``task`` at ``priority`` goes to: the only place that
    decides. A task named in INFERQ_TASK_QUEUES has queues of its own (``interactive.langid``,
    ``bulk.langid``) that only its own workers (``inferq worker --tasks langid``) consume, so it
    scales on its own; every other task shares ``interactive`` and ``bulk``."""
    if priority not in QUEUES:
        raise ValueError(f"unknown priority {priority!r}; expected one of {QUEUES}")
    if task is not None and task in settings.task_queues:
        return f"{priority}.{task}"
    return priority


def task_queue_names(settings: Settings) -> tuple[str, ...]:
    """The queues of the tasks that have their own (none unless INFERQ_TASK_QUEUES names some)."""
    return tuple(run_queue(p, task, settings) for task in settings.task_queues for p in QUEUES)


def all_queues(settings: Settings) -> tuple[str, ...]:
    """Every queue a message can be sent to: what Celery declares and the backlog reads."""
    return (*QUEUES, *task_queue_names(settings), MAINTENANCE_QUEUE, WEBHOOKS_QUEUE)


def queues_for_tasks(tasks: Sequence[str], settings: Settings) -> list[str]:
    """The queues a worker serving only ``tasks`` consumes. A task without queues of its own
    is refused: its messages go to the shared queues, so such a worker would consume nothing
    of it (and nobody else's work either)."""
    if not tasks:
        raise ValueError("name at least one task")
    shared = [task for task in tasks if task not in settings.task_queues]
    if shared:
        raise ValueError(
            f"{', '.join(shared)} has no queues of its own, so a worker for it alone would "
            f"consume nothing: add it to INFERQ_TASK_QUEUES (now {settings.task_queues}) on every "
            "inferq process, or run a general worker (no --tasks)"
        )
    return [run_queue(priority, task, settings) for task in tasks for priority in QUEUES]


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "timezone": settings.timezone,
        "broker_connection_retry_on_startup": True,
        # Redis re-delivers an unacked message after this long. A batch takes seconds, so an hour
        # never re-runs a live batch; a dead worker's batches are re-driven sooner by the sweeper.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_seconds},
        "task_queues": [
            Queue(name)  # type: ignore[no-untyped-call]
            for name in all_queues(settings)
        ],
        "task_default_queue": "interactive",
        "task_serializer": "json",
        "accept_content": ["json"],
        # Results live in PostgreSQL; Celery's result backend would be a second, weaker copy.
        "task_ignore_result": True,
        # Ack only after the task body returns; a worker killed mid-batch gives the message back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # With late acks, a broken connection would otherwise let the same batch run twice at once.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Micro-batches form from reserved messages: a process must be allowed to hold enough
        # unacked messages to fill one batch even when each carries a single input (interactive
        # jobs). More would hoard work that another worker could take, so it is one batch's
        # worth — held for at most max_wait_ms plus the batch in flight.
        "worker_prefetch_multiplier": max(p.max_items for p in settings.batching.values()),
        "worker_hijack_root_logger": False,
        # Our logs are already JSON lines on stderr; redirecting would wrap each in another.
        "worker_redirect_stdouts": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_schedule": {
            "relay-outbox": {
                "task": RELAY_OUTBOX,
                "schedule": settings.relay_interval_seconds,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": settings.relay_interval_seconds},
            },
            "sweep": {
                "task": SWEEP,
                "schedule": settings.sweep_interval_seconds,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": settings.sweep_interval_seconds},
            },
            # A backstop: workers top a batch up as they finish its items.
            "dispatch-batches": {
                "task": DISPATCH_BATCHES,
                "schedule": settings.relay_interval_seconds,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": settings.relay_interval_seconds},
            },
            "nightly-scan": {
                "task": NIGHTLY_SCAN,
                "schedule": nightly_schedule(settings),
                "options": {"queue": MAINTENANCE_QUEUE},
            },
            "nightly-collect": {
                "task": NIGHTLY_COLLECT,
                "schedule": settings.nightly_collect_interval_seconds,
                "options": {
                    "queue": MAINTENANCE_QUEUE,
                    "expires": settings.nightly_collect_interval_seconds,
                },
            },
            "dispatch-webhooks": {
                "task": DISPATCH_WEBHOOKS,
                "schedule": settings.webhook_dispatch_interval_seconds,
                "options": {
                    "queue": MAINTENANCE_QUEUE,
                    "expires": settings.webhook_dispatch_interval_seconds,
                },
            },
        },
    }


def nightly_schedule(settings: Settings) -> crontab:
    """INFERQ_NIGHTLY_CRON (``minute hour day-of-month month day-of-week``) as Celery's crontab,
    read in INFERQ_TIMEZONE (the app's ``timezone``)."""
    fields = settings.nightly_cron.split()
    if len(fields) != 5:
        raise ValueError(
            f"INFERQ_NIGHTLY_CRON {settings.nightly_cron!r} needs five fields: "
            "minute hour day-of-month month day-of-week"
        )
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def create_celery(settings: Settings) -> Celery:
    app = Celery("inferq", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    return create_celery(get_settings())


@dataclass(frozen=True)
class RunItems:
    """One job's share of a run-items message: the job and which of its items to run."""

    job_id: str
    item_ids: list[int]
    request_id: str | None = None


def send_run_items(
    app: Celery, entries: Sequence[RunItems], *, queue: str, task: str | None, tokens: int | None
) -> None:
    """One message for the items of one or more jobs (of one task, for one queue). Many
    single-input jobs share a message: a worker's micro-batch then takes a few messages instead
    of hundreds, and the sender makes one broker round trip for all of them. The sizes ride
    along so the worker can flush a micro-batch on items or tokens without opening the body."""
    body = [[entry.job_id, entry.item_ids, entry.request_id] for entry in entries]
    kwargs = {"task": task, "n_items": sum(len(e.item_ids) for e in entries), "tokens": tokens}
    app.send_task(RUN_ITEMS, args=[body], kwargs=kwargs, queue=queue)


def run_items_of(args: Sequence[Any], kwargs: dict[str, Any]) -> list[RunItems]:
    """The entries of a run-items message. Messages sent before messages carried several jobs
    (``args = [job_id, item_ids]``, ``request_id`` in kwargs) may still sit in a queue."""
    if len(args) == 2 and isinstance(args[0], str):
        return [RunItems(args[0], list(args[1]), kwargs.get("request_id"))]
    return [RunItems(str(job_id), list(ids), request_id) for job_id, ids, request_id in args[0]]


def send_delivery(app: Celery, delivery_id: int) -> None:
    app.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=WEBHOOKS_QUEUE)
