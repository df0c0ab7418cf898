"""Per-version counters of a rollout revision, summed over every worker in PostgreSQL.

A worker adds its batch's deltas in one upsert (``items = items + excluded.items``), after the
batch's results have committed: the counters describe what was served and are advice for the
operator deciding on a promotion, so a lost increment (a worker killed in between) costs a few
counts, never a result.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.db.models import ModelRolloutStat, utcnow

COUNTERS = ("items", "seconds", "scored", "confidence_sum", "compared", "agreed", "failed")


@dataclass
class VersionStats:
    """What one version did in one role (champion, canary, shadow) during a revision."""

    version: str
    role: str
    items: int = 0
    seconds: float = 0.0
    scored: int = 0
    confidence_sum: float = 0.0
    compared: int = 0  # shadow: inputs whose champion result it was compared with
    agreed: int = 0  # shadow: of those, how many got the same label
    failed: int = 0  # shadow: inputs it produced nothing for

    def add(self, other: VersionStats) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.scored if self.scored else None

    @property
    def ms_per_item(self) -> float | None:
        return 1000 * self.seconds / self.items if self.items else None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


def add(session: Session, task: str, revision: int, deltas: list[VersionStats]) -> None:
    """Add these deltas to the revision's counters (one statement, any number of versions)."""
    if not deltas:
        return
    rows = [
        {"task": task, "revision": revision, "updated_at": utcnow(), **_values(delta)}
        for delta in deltas
    ]
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(ModelRolloutStat).values(rows)
    table = ModelRolloutStat.__table__.c
    statement = statement.on_conflict_do_update(
        index_elements=["task", "revision", "version", "role"],
        set_={
            **{name: table[name] + statement.excluded[name] for name in COUNTERS},
            "updated_at": statement.excluded.updated_at,
        },
    )
    session.execute(statement)


def read(session: Session, task: str, revision: int) -> list[VersionStats]:
    rows = session.scalars(
        select(ModelRolloutStat)
        .where(ModelRolloutStat.task == task, ModelRolloutStat.revision == revision)
        .order_by(ModelRolloutStat.role, ModelRolloutStat.version)
    )
    return [
        VersionStats(row.version, row.role, **{name: getattr(row, name) for name in COUNTERS})
        for row in rows
    ]


def _values(delta: VersionStats) -> dict[str, object]:
    return {field.name: getattr(delta, field.name) for field in fields(delta)}
