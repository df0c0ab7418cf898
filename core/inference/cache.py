"""Two-level result cache keyed by (task, model version, input hash).

The input hash already folds in the normalised text; the model version folds in the
preprocessing version, so a new model or a new normalisation never serves an old result.
L1 is Redis (TTL); L3 is PostgreSQL: the result rows themselves, found by the same key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import structlog
from sqlalchemy import Text, bindparam, cast, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.selectable import TableValuedAlias

from core.db.models import Result
from core.inference.types import Prediction
from core.telemetry.metrics import CACHE_LOOKUPS

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CachedResult:
    model: str
    version: str
    prediction: Prediction


class RedisCache:
    """L1. Failures are logged and treated as misses: the cache must never fail a job."""

    def __init__(self, url: str, ttl_seconds: int) -> None:
        self.url = url
        self.ttl_seconds = ttl_seconds

    @classmethod
    def from_settings(cls, url: str | None, ttl_seconds: int) -> RedisCache | None:
        return cls(url, ttl_seconds) if url else None

    @staticmethod
    def key(task: str, version: str, input_hash: str) -> str:
        return f"inferq:result:{task}:{version}:{input_hash}"

    def get_many(self, task: str, version: str, hashes: Sequence[str]) -> dict[str, CachedResult]:
        if not hashes:
            return {}
        try:
            values = _client(self.url).mget([self.key(task, version, h) for h in hashes])
        except Exception as exc:  # a cache outage is a miss, never an error
            log.warning("l1_cache_unavailable", error=repr(exc))
            return {}
        return {h: _decode(v) for h, v in zip(hashes, values, strict=True) if v is not None}

    def put_many(self, task: str, entries: Iterable[tuple[str, CachedResult]]) -> None:
        try:
            pipe = _client(self.url).pipeline(transaction=False)
            for input_hash, cached in entries:
                key = self.key(task, cached.version, input_hash)
                pipe.set(key, _encode(cached), ex=self.ttl_seconds)
            pipe.execute()
        except Exception as exc:  # a cache outage is a miss, never an error
            log.warning("l1_cache_unavailable", error=repr(exc))


def lookup_stored(
    session: Session, task: str, version: str, hashes: Sequence[str]
) -> dict[str, CachedResult]:
    """L3: one stored result of this exact task, version and input, per input.

    Every item keeps its own result row, so a popular text has as many rows as times it was
    sent (a nightly file of repeated texts adds a million). The lookup therefore reads one row
    per asked hash, found through the cache-key index by a correlated ``LIMIT 1``, instead of
    every row that matches: its cost stays per hash, however often each was stored."""
    wanted = sorted(set(hashes))
    if not wanted:
        return {}
    stored = aliased(Result)
    source = _hash_rows(session, wanted)
    first = (
        select(stored.id)
        .where(
            stored.task == task,
            stored.version == version,
            stored.input_hash == source.c.value,
            stored.degraded.is_(False),
        )
        .limit(1)
        .scalar_subquery()
    )
    query = select(
        Result.input_hash, Result.model, Result.label, Result.score, Result.output
    ).where(Result.id.in_(select(first).select_from(source)))
    found: dict[str, CachedResult] = {}
    for input_hash, model, label, score, output in session.execute(query):
        extra = output or {}
        prediction = Prediction(
            label, score, extra.get("scores"), extra.get("embedding"), extra.get("entities")
        )
        found.setdefault(input_hash, CachedResult(model, version, prediction))
    return found


def _hash_rows(session: Session, hashes: list[str]) -> TableValuedAlias:
    """The hashes as a one-column table (``value``), sent as one parameter: an array unnested
    on PostgreSQL, a JSON array read by ``json_each`` on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        array = cast(bindparam("cache_hashes", hashes, ARRAY(Text)), ARRAY(Text))
        return func.unnest(array).table_valued("value").render_derived(name="asked")
    return (
        func.json_each(bindparam("cache_hashes", json.dumps(hashes)))
        .table_valued("value")
        .alias("asked")
    )


def lookup(
    session: Session, cache: RedisCache | None, task: str, version: str, hashes: Sequence[str]
) -> dict[str, CachedResult]:
    """L1 first, then L3 for what L1 did not have."""
    found = cache.get_many(task, version, hashes) if cache is not None else {}
    CACHE_LOOKUPS.labels("l1", "hit").inc(len(found))
    missing = [h for h in hashes if h not in found]
    if missing:
        stored = lookup_stored(session, task, version, missing)
        CACHE_LOOKUPS.labels("l3", "hit").inc(len(stored))
        CACHE_LOOKUPS.labels("l3", "miss").inc(len(set(missing)) - len(stored))
        found.update(stored)
    return found


def _encode(cached: CachedResult) -> str:
    return json.dumps(
        {"model": cached.model, "version": cached.version, "prediction": asdict(cached.prediction)}
    )


def _decode(raw: bytes | str) -> CachedResult:
    data: dict[str, Any] = json.loads(raw)
    return CachedResult(data["model"], data["version"], Prediction(**data["prediction"]))


@lru_cache(maxsize=4)
def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
