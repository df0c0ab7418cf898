"""Per-process resources of a worker, created on first use (never at import, never before fork)."""

from __future__ import annotations

from functools import lru_cache

from core.config import Settings, get_settings
from core.db.session import Database
from core.inference.availability import TierReports
from core.inference.cache import RedisCache
from core.inference.circuit import CircuitPolicy, Circuits
from core.inference.engine import InferenceEngine
from core.jobs.execute import Worker


def settings() -> Settings:
    return get_settings()


@lru_cache(maxsize=1)
def database() -> Database:
    return Database(settings().resolved_database_url)


@lru_cache(maxsize=1)
def engine() -> InferenceEngine:
    current = settings()
    circuits = Circuits(CircuitPolicy.from_settings(current), current.resolved_cache_url)
    reports = TierReports(current.resolved_cache_url)
    return InferenceEngine(
        current.device,
        circuits=circuits,
        policies=current.batching,
        reports=reports,
        data_dir=current.data_dir,
        max_versions=current.max_loaded_versions,
    )


@lru_cache(maxsize=1)
def worker() -> Worker:
    current = settings()
    cache = RedisCache.from_settings(current.resolved_cache_url, current.cache_ttl_seconds)
    return Worker(database(), engine(), current, cache)


def reset() -> None:
    """Forget resources inherited from a parent process (called in each forked child)."""
    if database.cache_info().currsize:
        database().engine.dispose(close=False)
    for cached in (database, engine, worker):
        cached.cache_clear()
