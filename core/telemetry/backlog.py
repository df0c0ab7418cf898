"""The backlog that autoscaling and alerts read, computed from the truth on each scrape.

A custom Prometheus collector (not gauges set by workers): PostgreSQL knows every queued and
running item whichever worker holds it, and Redis knows what waits in each Celery list. The
process answering the scrape computes the families once, so they are never summed across API
processes or pods; PromQL reads them with ``max by (task, priority)``.

One statement per refresh, cached ``INFERQ_BACKLOG_CACHE_SECONDS``:

- pending items of pending jobs, by job task and priority: the partial index on pending jobs
  (``ix_jobs_tenant_pending``) finds the jobs, the ``(job_id, index)`` key their items;
- results written since the last refresh (a primary-key range: results only ever get new,
  growing ids), by task and priority: the items finished in between, whichever worker ran them;
- webhook deliveries still open (``ix_webhook_deliveries_due`` leads with status);
- the newest result id, the next refresh's starting point.

``inferq_backlog_seconds`` is backlog ÷ finishing rate. The rate is the items finished between
two refreshes ÷ the time between them, smoothed by an exponentially weighted moving average with
time constant ``INFERQ_BACKLOG_RATE_WINDOW_SECONDS`` (the weight of a sample is
``1 - exp(-dt / window)``, so an irregular scrape interval weighs what it covers). While nothing
finishes (no worker, or every worker stuck) or before this process has a rate (its first
refresh), it reports the oldest pending item's age instead: a measured number that keeps
growing while nobody drains the backlog, so it keeps asking for workers, where an assumed floor
rate would be an invented figure, wrong by orders of magnitude between CPU and GPU workers.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import BigInteger, Integer, Select, cast, func, literal_column, null, select
from sqlalchemy.exc import SQLAlchemyError

from core.db.models import Job, JobItem, Result, WebhookDelivery
from core.db.session import Database
from core.jobs.state import ItemStatus, JobStatus
from core.telemetry.metrics import BACKLOG_READ_ERRORS
from core.webhooks.deliveries import OPEN

log = structlog.get_logger(__name__)

Key = tuple[str, str]  # (task, priority)
_PENDING_JOBS = (JobStatus.QUEUED, JobStatus.RUNNING)
_PENDING_ITEMS = (ItemStatus.QUEUED, ItemStatus.RUNNING)
# Row kinds of the one statement.
_BACKLOG, _FINISHED, _WEBHOOKS, _HEAD = 0, 1, 2, 3
# No result id is this large: the first refresh of a process counts no finished items.
_NO_RESULTS_YET = 2**62


@dataclass
class Reading:
    """One refresh of PostgreSQL."""

    backlog: dict[Key, int] = field(default_factory=dict)
    oldest: dict[Key, datetime] = field(default_factory=dict)
    finished: dict[Key, int] = field(default_factory=dict)
    webhook_backlog: int = 0
    head: int | None = None


def _kind(value: int) -> Any:
    return literal_column(str(value), Integer).label("kind")


def backlog_statement(after_result_id: int) -> Select[Any]:
    """The one grouped statement (see the module docstring)."""
    no_time = cast(null(), Job.created_at.type)
    no_id = cast(null(), BigInteger)
    no_text = cast(null(), Job.task.type)
    backlog = (
        select(
            _kind(_BACKLOG),
            Job.task,
            Job.priority,
            func.count().label("n"),
            func.min(Job.created_at).label("oldest"),
            no_id.label("max_id"),
        )
        .join(JobItem, JobItem.job_id == Job.id)
        .where(Job.status.in_(_PENDING_JOBS), JobItem.status.in_(_PENDING_ITEMS))
        .group_by(Job.task, Job.priority)
    )
    finished = (
        select(_kind(_FINISHED), Result.task, Job.priority, func.count(), no_time, no_id)
        .join(Job, Job.id == Result.job_id)
        .where(Result.id > after_result_id)
        .group_by(Result.task, Job.priority)
    )
    webhooks = select(_kind(_WEBHOOKS), no_text, no_text, func.count(), no_time, no_id).where(
        WebhookDelivery.status.in_(list(OPEN))
    )
    # max(id) alone is answered from the primary key; the row counts nothing.
    head = select(
        _kind(_HEAD),
        no_text,
        no_text,
        literal_column("0", BigInteger),
        no_time,
        func.max(Result.id),
    )
    return backlog.union_all(finished, webhooks, head)  # type: ignore[return-value]


def read_database(database: Database, after_result_id: int | None) -> Reading:
    statement = backlog_statement(_NO_RESULTS_YET if after_result_id is None else after_result_id)
    reading = Reading()
    with database.read() as session:
        for kind, task, priority, n, oldest, max_id in session.execute(statement).tuples():
            if kind == _BACKLOG:
                reading.backlog[(task, priority)] = int(n)
                reading.oldest[(task, priority)] = oldest
            elif kind == _FINISHED:
                reading.finished[(task, priority)] = int(n)
            elif kind == _WEBHOOKS:
                reading.webhook_backlog = int(n)
            else:
                reading.head = None if max_id is None else int(max_id)
    return reading


class FinishingRate:
    """Items finished per second per (task, priority): an EWMA of the rate between refreshes."""

    def __init__(self, window_seconds: float) -> None:
        self.window_seconds = window_seconds
        self.rates: dict[Key, float] = {}

    def add(self, finished: dict[Key, int], elapsed: float, keys: Iterable[Key]) -> None:
        if elapsed <= 0:
            return
        weight = 1 - math.exp(-elapsed / self.window_seconds)
        for key in keys:
            sample = finished.get(key, 0) / elapsed
            previous = self.rates.get(key)
            self.rates[key] = (
                sample if previous is None else previous + weight * (sample - previous)
            )

    def get(self, key: Key) -> float | None:
        return self.rates.get(key)


def age_seconds(first: datetime | None, now: datetime) -> float:
    """How long ago ``first`` was (0 when there is nothing pending)."""
    return max(0.0, (now - first).total_seconds()) if first is not None else 0.0


def queue_lengths(client: redis.Redis, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each Celery queue (Redis list lengths), in one round trip."""
    pipeline = client.pipeline(transaction=False)
    for queue in queues:
        pipeline.llen(queue)
    return dict(zip(queues, (int(length) for length in pipeline.execute()), strict=True))


def backlog_seconds(items: int, rate: float | None, oldest_age: float) -> float:
    """Time to drain ``items`` at ``rate``; the oldest item's age while the rate is 0 or
    unknown (see the module docstring for why)."""
    if items == 0:
        return 0.0
    if rate is None or rate <= 0:
        return oldest_age
    return items / rate


class BacklogCollector(Collector):
    """``inferq_backlog_items``, ``inferq_oldest_pending_seconds``, ``inferq_backlog_seconds``
    (task, priority), ``inferq_webhook_backlog`` and ``inferq_queue_messages`` (queue)."""

    def __init__(
        self,
        database: Database,
        *,
        redis_url: str | None,
        queues: Sequence[str],
        tasks: Callable[[], Iterable[str]],
        priorities: Sequence[str],
        cache_seconds: float,
        rate_window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._redis = (
            redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
            if redis_url
            else None
        )
        self._queues = tuple(queues)
        self._tasks = tasks
        self._priorities = tuple(priorities)
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._rate = FinishingRate(rate_window_seconds)
        self._lock = threading.Lock()
        self._families: list[Metric] = []
        self._read_at: float | None = None  # monotonic time of the last refresh
        self._counted_at: float | None = None  # ... of the last successful database read
        self._after_result_id: int | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._cache_seconds:
                self._families = self._database_families(now) + self._queue_families()
                self._read_at = now
            families = list(self._families)
        yield from families

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def _database_families(self, now: float) -> list[Metric]:
        try:
            reading = read_database(self._database, self._after_result_id)
        except SQLAlchemyError as exc:  # /metrics still answers: the other families stand
            BACKLOG_READ_ERRORS.labels("database").inc()
            log.warning("backlog_unreadable", source="database", error=repr(exc))
            return []
        keys = self._keys(reading)
        if self._counted_at is not None and self._after_result_id is not None:
            self._rate.add(reading.finished, now - self._counted_at, keys)
        self._counted_at = now
        if reading.head is not None:
            self._after_result_id = reading.head
        elif self._after_result_id is None:
            self._after_result_id = 0  # no result yet: every future one is new
        return self._families_of(reading, keys)

    def _keys(self, reading: Reading) -> list[Key]:
        """Every task and priority, so an empty backlog is a 0 and never a missing series."""
        known = {(task, priority) for task in self._tasks() for priority in self._priorities}
        return sorted(known | set(reading.backlog) | set(reading.finished))

    def _families_of(self, reading: Reading, keys: list[Key]) -> list[Metric]:
        labels = ["task", "priority"]
        items = GaugeMetricFamily(
            "inferq_backlog_items", "Queued and running items, from PostgreSQL", labels=labels
        )
        oldest = GaugeMetricFamily(
            "inferq_oldest_pending_seconds",
            "Age of the oldest queued or running item (its job's submission)",
            labels=labels,
        )
        drain = GaugeMetricFamily(
            "inferq_backlog_seconds",
            "Backlog divided by the smoothed finishing rate; the oldest item's age at rate 0",
            labels=labels,
        )
        wall = datetime.now(UTC)
        for key in keys:
            count = reading.backlog.get(key, 0)
            age = age_seconds(reading.oldest.get(key), wall)
            items.add_metric(list(key), count)
            oldest.add_metric(list(key), age)
            drain.add_metric(list(key), backlog_seconds(count, self._rate.get(key), age))
        webhooks = GaugeMetricFamily(
            "inferq_webhook_backlog", "Webhook deliveries waiting to be sent (pending or failing)"
        )
        webhooks.add_metric([], reading.webhook_backlog)
        return [items, oldest, drain, webhooks]

    def _queue_families(self) -> list[Metric]:
        if self._redis is None:  # embedded mode: no Redis lists to read
            return []
        try:
            lengths = queue_lengths(self._redis, self._queues)
        except redis.RedisError as exc:
            BACKLOG_READ_ERRORS.labels("redis").inc()
            log.warning("backlog_unreadable", source="redis", error=repr(exc))
            return []
        family = GaugeMetricFamily(
            "inferq_queue_messages",
            "Messages waiting in a Celery queue (Redis list length)",
            labels=["queue"],
        )
        for queue, length in lengths.items():
            family.add_metric([queue], length)
        return [family]
