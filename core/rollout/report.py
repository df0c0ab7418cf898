"""What a task's rollout looks like now: its state, the version each role names, what each
version did during this revision, and the last changes. Read by GET /v1/models/{task}/rollout,
`inferq models rollout --show` and the /metrics collector, the same way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.db.models import ModelRollout
from core.db.session import Database
from core.inference import versions
from core.rollout import changes, stats
from core.rollout.state import Rollout, of_row, read
from core.rollout.stats import VersionStats
from schemas.models import RolloutChangeOut, RolloutOut, VersionStatsOut

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RolloutReport:
    rollout: Rollout
    champion_version: str | None  # the champion's version string (the shipped one's if None)
    stats: list[VersionStats]
    history: list[changes.Change]

    def of(self, role: str) -> VersionStats | None:
        return next((s for s in self.stats if s.role == role), None)


def report(session: Session, task: str, *, history: int = 10) -> RolloutReport:
    rollout = read(session, task)
    return RolloutReport(
        rollout,
        rollout.champion or versions.shipped_version(task),
        stats.read(session, task, rollout.revision) if rollout.revision else [],
        changes.history(session, task, history),
    )


def active_rollouts(session: Session) -> list[Rollout]:
    rows = session.scalars(select(ModelRollout).order_by(ModelRollout.task))
    return [of_row(row) for row in rows]


class RolloutCollector:
    """``inferq_rollout_agreement{task,version}`` (the shadow's agreement with the champion in
    this revision), ``inferq_rollout_canary_percent{task,version}`` and
    ``inferq_rollout_items{task,version,role}``, summed over every worker from PostgreSQL at
    scrape time (cached a few seconds), so each API process reports the same values."""

    CACHE_SECONDS = 5.0

    def __init__(self, database: Database) -> None:
        self._database = database
        self._lock = threading.Lock()
        self._cached: tuple[float, list[tuple[Rollout, list[VersionStats]]]] = (-1e18, [])

    def _read(self) -> list[tuple[Rollout, list[VersionStats]]]:
        with self._lock:
            taken, cached = self._cached
            if time.monotonic() - taken < self.CACHE_SECONDS:
                return cached
            try:
                with self._database.read() as session:
                    cached = [
                        (rollout, stats.read(session, rollout.task, rollout.revision))
                        for rollout in active_rollouts(session)
                    ]
            except SQLAlchemyError as exc:  # /metrics still answers without these
                log.warning("rollout_unreadable", error=repr(exc))
                cached = []
            self._cached = (time.monotonic(), cached)
            return cached

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        agreement = GaugeMetricFamily(
            "inferq_rollout_agreement",
            "Share of a shadow version's results with the champion's label, this revision",
            labels=["task", "version"],
        )
        canary = GaugeMetricFamily(
            "inferq_rollout_canary_percent",
            "Percent of inputs the canary version serves",
            labels=["task", "version"],
        )
        items = GaugeMetricFamily(
            "inferq_rollout_items",
            "Inputs each version served (or shadowed) in the task's current rollout revision",
            labels=["task", "version", "role"],
        )
        for rollout, version_stats in self._read():
            if rollout.canary is not None:
                canary.add_metric([rollout.task, rollout.canary], rollout.canary_percent)
            for row in version_stats:
                items.add_metric([rollout.task, row.version, row.role], row.items)
                if row.role == "shadow" and row.agreement is not None:
                    agreement.add_metric([rollout.task, row.version], row.agreement)
        yield from (agreement, canary, items)


def presented(found: RolloutReport) -> RolloutOut:
    """The report as GET /v1/models/{task}/rollout answers it."""
    rollout, shadow = found.rollout, found.of("shadow")
    return RolloutOut(
        task=rollout.task,
        revision=rollout.revision,
        champion=found.champion_version,
        champion_is_shipped=rollout.champion is None,
        canary=rollout.canary,
        canary_percent=rollout.canary_percent if rollout.canary else 0.0,
        shadow=rollout.shadow,
        shadow_percent=rollout.shadow_percent if rollout.shadow else 0.0,
        shadow_agreement=shadow.agreement if shadow is not None else None,
        versions=[VersionStatsOut.model_validate(row, from_attributes=True) for row in found.stats],
        changed_at=rollout.changed_at,
        changed_by=rollout.changed_by,
        history=[
            RolloutChangeOut.model_validate(change, from_attributes=True)
            for change in found.history
        ],
    )
