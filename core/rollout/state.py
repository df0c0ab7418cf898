"""A task's rollout as a value, how it routes an input, and the per-process cache of it.

Routing hashes the input (its cache key's hash) with the canary's version: a text meets the
same version on every worker for as long as the rollout lasts, so its cached result stays the
one that version made, and a new canary draws a fresh, independent sample of inputs.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import ModelRollout
from core.db.session import Database

log = structlog.get_logger(__name__)

T = TypeVar("T")


def bucket(salt: str, input_hash: str) -> float:
    """Where an input falls in [0, 100) for this salt: uniform, and the same on every process."""
    digest = hashlib.sha256(f"{salt}\x00{input_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


@dataclass(frozen=True)
class Rollout:
    task: str
    revision: int = 0
    champion: str | None = None  # None: the shipped artefact
    canary: str | None = None
    canary_percent: float = 0.0
    shadow: str | None = None
    shadow_percent: float = 100.0
    changed_at: datetime | None = None
    changed_by: str | None = None

    @property
    def active(self) -> bool:
        """A canary or a shadow runs: per-version stats are worth keeping."""
        return self.canary is not None or self.shadow is not None

    def serves(self, input_hash: str) -> str | None:
        """The version this input's result comes from (None: the shipped artefact)."""
        if self.canary is not None and bucket(self.canary, input_hash) < self.canary_percent:
            return self.canary
        return self.champion

    def role(self, version: str | None) -> str:
        return "canary" if version is not None and version == self.canary else "champion"

    def shadowed(self, input_hash: str) -> bool:
        """Whether the shadow also runs on this input (a deterministic sample of the traffic)."""
        return self.shadow is not None and bucket(self.shadow, input_hash) < self.shadow_percent

    def named_versions(self) -> set[str]:
        return {v for v in (self.champion, self.canary, self.shadow) if v is not None}

    def route(
        self, items: Iterable[T], input_hash: Callable[[T], str]
    ) -> dict[str | None, list[T]]:
        """The items grouped by the version that serves them, champion first."""
        groups: dict[str | None, list[T]] = {self.champion: []}
        for item in items:
            groups.setdefault(self.serves(input_hash(item)), []).append(item)
        return {version: group for version, group in groups.items() if group}


def read(session: Session, task: str) -> Rollout:
    row = session.scalar(select(ModelRollout).where(ModelRollout.task == task))
    return Rollout(task) if row is None else of_row(row)


def of_row(row: ModelRollout) -> Rollout:
    return Rollout(
        task=row.task,
        revision=row.revision,
        champion=row.champion,
        canary=row.canary,
        canary_percent=row.canary_percent,
        shadow=row.shadow,
        shadow_percent=row.shadow_percent,
        changed_at=row.changed_at,
        changed_by=row.changed_by,
    )


class RolloutCache:
    """Each process's view of the rollouts, at most ``max_age`` seconds old.

    Read on the hot path (every batch, every submit), so it is a dictionary lookup until the
    entry is stale; then one primary-key read. A database error keeps the last view (logged):
    serving goes on with what it served a moment ago rather than failing the batch.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[float, Rollout]] = {}
        self._lock = threading.Lock()

    def get(self, scope: str, task: str, load: Callable[[], Rollout], *, max_age: float) -> Rollout:
        key = (scope, task)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and now - entry[0] < max_age:
            return entry[1]
        try:
            rollout = load()
        except Exception as exc:  # keep serving the last known rollout; say why
            if entry is None:
                raise
            log.warning("rollout_refresh_failed", task=task, error=repr(exc))
            return entry[1]
        with self._lock:
            self._entries[key] = (now, rollout)
        return rollout

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


CACHE = RolloutCache()


def current(session: Session, task: str, *, max_age: float) -> Rollout:
    """The task's rollout as this process last read it from this session's database."""
    scope = str(session.get_bind().engine.url)
    return CACHE.get(scope, task, lambda: read(session, task), max_age=max_age)


def current_in(database: Database, task: str, *, max_age: float) -> Rollout:
    """The same from a Database: a connection is taken only when the view is stale."""

    def load() -> Rollout:
        with database.read() as session:
            return read(session, task)

    return CACHE.get(str(database.engine.url), task, load, max_age=max_age)
