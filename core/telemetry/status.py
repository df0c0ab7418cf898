"""What `inferq status` shows, read from the same truths as the metrics: PostgreSQL for backlog,
throughput and tiers served (core.telemetry.backlog's statement), Redis for queue lengths and
circuit states, the drift windows, and the workers that answer a ping.

A ``StatusReader`` keeps the previous reading, so its second and later snapshots carry rates
(items finished per second since the previous one, smoothed like ``inferq_backlog_seconds``).
It works in embedded mode too: the SQLite database, no Redis lists, no remote workers to ping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import func, select

from core.config import Settings
from core.db.models import Result, WebhookDelivery, utcnow
from core.db.session import Database
from core.inference.circuit import CircuitPolicy, Circuits
from core.inference.registry import all_tasks
from core.telemetry.backlog import (
    FinishingRate,
    Key,
    age_seconds,
    backlog_seconds,
    queue_lengths,
    read_database,
)

WORKER_PING_SECONDS = 5.0  # how often workers are pinged (a ping waits up to a second)
RATE_WINDOW_SECONDS = 30.0


@dataclass(frozen=True)
class BacklogRow:
    task: str
    priority: str
    items: int
    oldest_seconds: float
    backlog_seconds: float
    finished_per_second: float | None


@dataclass(frozen=True)
class TierRow:
    task: str
    tier: str
    served_per_second: float | None
    circuit: str


@dataclass(frozen=True)
class DriftRow:
    task: str
    drifted: bool
    window: int
    signals: str  # "label 0.03, confidence 0.41!" (! marks a drifted signal)


@dataclass
class Snapshot:
    taken_at: datetime
    mode: str  # "embedded" or "distributed"
    backlog: list[BacklogRow] = field(default_factory=list)
    queues: dict[str, int] = field(default_factory=dict)
    tiers: list[TierRow] = field(default_factory=list)
    drift: list[DriftRow] = field(default_factory=list)
    webhook_backlog: int = 0
    webhooks_failed_last_hour: int = 0
    workers: list[str] | None = None  # None: not asked (embedded mode, or no answer yet)
    problems: list[str] = field(default_factory=list)


class StatusReader:
    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.circuits = Circuits(CircuitPolicy.from_settings(settings), settings.resolved_cache_url)
        self._redis = (
            redis.Redis.from_url(settings.broker_url, socket_timeout=1, socket_connect_timeout=1)
            if not settings.embedded
            else None
        )
        self._finishing = FinishingRate(RATE_WINDOW_SECONDS)
        self._serving = FinishingRate(RATE_WINDOW_SECONDS)
        self._after: int | None = None
        self._read_at: float | None = None
        self._workers: list[str] | None = None
        self._pinged_at = 0.0

    def read(self) -> Snapshot:
        now = time.monotonic()
        elapsed = None if self._read_at is None else now - self._read_at
        snapshot = Snapshot(utcnow(), "embedded" if self.settings.embedded else "distributed")
        reading = read_database(self.database, self._after)
        served = self._served_since(self._after)
        tasks = sorted(all_tasks())
        keys = sorted(
            {(task, priority) for task in tasks for priority in ("interactive", "bulk")}
            | set(reading.backlog)
        )
        if elapsed is not None:
            self._finishing.add(reading.finished, elapsed, keys)
            self._serving.add(served, elapsed, served.keys() | self._tier_keys(tasks))
        self._after = reading.head if reading.head is not None else (self._after or 0)
        self._read_at = now
        snapshot.backlog = self._backlog_rows(reading, keys)
        snapshot.tiers = self._tier_rows(tasks, measured=elapsed is not None)
        snapshot.webhook_backlog = reading.webhook_backlog
        snapshot.webhooks_failed_last_hour = self._webhooks_failed()
        snapshot.queues = self._queues(snapshot)
        snapshot.drift = self._drift(tasks, snapshot)
        snapshot.workers = self._ping(now, snapshot)
        return snapshot

    def _backlog_rows(self, reading: Any, keys: list[Key]) -> list[BacklogRow]:
        wall = datetime.now(UTC)
        rows = []
        for key in keys:
            items = reading.backlog.get(key, 0)
            age = age_seconds(reading.oldest.get(key), wall)
            rate = self._finishing.get(key)
            task, priority = key
            drain = backlog_seconds(items, rate, age)
            rows.append(BacklogRow(task, priority, items, age, drain, rate))
        return rows

    def _served_since(self, after: int | None) -> dict[Key, int]:
        """Results written since the previous reading, by (task, tier)."""
        if after is None:
            return {}
        with self.database.read() as session:
            rows = session.execute(
                select(Result.task, Result.tier, func.count())
                .where(Result.id > after)
                .group_by(Result.task, Result.tier)
            ).tuples()
            return {(task, tier): int(count) for task, tier, count in rows}

    @staticmethod
    def _tier_keys(tasks: list[str]) -> set[Key]:
        specs = all_tasks()
        return {(task, tier.tier) for task in tasks for tier in specs[task].chain}

    def _tier_rows(self, tasks: list[str], measured: bool) -> list[TierRow]:
        specs = all_tasks()
        return [
            TierRow(
                task,
                tier.tier,
                self._serving.get((task, tier.tier)) if measured else None,
                self.circuits.state(task, tier.tier),
            )
            for task in tasks
            for tier in specs[task].chain
        ]

    def _webhooks_failed(self) -> int:
        since = utcnow().timestamp() - 3600
        with self.database.read() as session:
            count = session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(
                    WebhookDelivery.status == "failed",
                    WebhookDelivery.updated_at >= datetime.fromtimestamp(since, UTC),
                )
            )
        return int(count or 0)

    def _queues(self, snapshot: Snapshot) -> dict[str, int]:
        if self._redis is None:
            return {}
        from core.broker import all_queues

        names = all_queues(self.settings)
        try:
            return queue_lengths(self._redis, names)
        except redis.RedisError as exc:
            snapshot.problems.append(f"Redis: {exc}")
            return {}

    def _drift(self, tasks: list[str], snapshot: Snapshot) -> list[DriftRow]:
        from core.telemetry.drift import check, load_profile

        rows = []
        for task in tasks:
            if load_profile(task) is None:
                continue
            try:
                report = check(self.settings, task)
            except Exception as exc:  # a status view shows what it cannot read, it does not stop
                snapshot.problems.append(f"drift {task}: {exc}")
                continue
            signals = ", ".join(
                f"{s.name} {s.score:.2f}{'!' if s.drifted else ''}" for s in report.signals
            )
            size = int(report.window.get("size", 0))
            rows.append(DriftRow(task, report.drifted, size, signals or "too few items yet"))
        return rows

    def _ping(self, now: float, snapshot: Snapshot) -> list[str] | None:
        if self.settings.embedded:
            return None
        if now - self._pinged_at >= WORKER_PING_SECONDS:
            self._pinged_at = now
            try:
                from core.broker import get_celery

                answers = get_celery().control.ping(timeout=1.0) or []
                self._workers = sorted(name for answer in answers for name in answer)
            except Exception as exc:  # the broker is down: say so, keep the last answer
                snapshot.problems.append(f"workers: {exc}")
        return self._workers
