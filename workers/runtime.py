"""Per-process resources of a worker, created on first use (never at import, never before fork)."""

from __future__ import annotations

from functools import lru_cache

from core.config import Settings, get_settings
from core.db.session import Database
from core.inference.engine import InferenceEngine


def settings() -> Settings:
    return get_settings()


@lru_cache(maxsize=1)
def database() -> Database:
    return Database(settings().resolved_database_url)


@lru_cache(maxsize=1)
def engine() -> InferenceEngine:
    return InferenceEngine(device=settings().device)


def reset() -> None:
    """Forget resources inherited from a parent process (called in each forked child)."""
    if database.cache_info().currsize:
        database().engine.dispose(close=False)
    database.cache_clear()
    engine.cache_clear()
