"""Which tiers the workers could not load, so that GET /v1/models and /readyz can say so.

A tier that cannot load (a worker installed without the `model` extra, a missing artefact) is a
fact about one worker process, not about the tier everywhere, so it is not a circuit-breaker
failure: each worker process reports its own, under its own field of one Redis hash per tier,
with an expiry. A report lives ``ttl`` seconds after the last batch that skipped the tier (the
worker refreshes it while it keeps skipping) and is withdrawn as soon as the tier loads. In
embedded mode the reports live in the process, which the API shares with its worker.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import structlog

log = structlog.get_logger(__name__)

REPORT_TTL_SECONDS = 900.0
KEY_PREFIX = "inferq:tier-down"

_MEMORY: dict[tuple[str, str], dict[str, tuple[str, float]]] = {}
_MEMORY_LOCK = threading.Lock()


def reporter_id() -> str:
    """This process, as one worker among many (read after fork: each pool child is its own)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class TierReports:
    """Tiers that worker processes could not load: reported by workers, read by the API."""

    def __init__(self, redis_url: str | None, ttl: float = REPORT_TTL_SECONDS) -> None:
        self._redis_url = redis_url
        self.ttl = ttl
        self._written: dict[tuple[str, str], float] = {}  # when this process last reported

    def down(self, task: str, tier: str, error: str) -> None:
        """Report (or refresh) that this process cannot load the tier. Writes at most a few times
        per ``ttl``, however many batches skip the tier."""
        now = time.time()
        last = self._written.get((task, tier))
        if last is not None and now - last < self.ttl / 4:
            return
        self._written[(task, tier)] = now
        if self._redis_url is None:
            with _MEMORY_LOCK:
                _MEMORY.setdefault((task, tier), {})[reporter_id()] = (error, now + self.ttl)
            return
        value = json.dumps({"error": error, "expires": now + self.ttl})
        self._write(lambda client: _hset_with_expiry(client, _key(task, tier), value, self.ttl))

    def up(self, task: str, tier: str) -> None:
        """Withdraw this process's report: the tier has loaded."""
        if self._written.pop((task, tier), None) is None:
            return
        if self._redis_url is None:
            with _MEMORY_LOCK:
                _MEMORY.get((task, tier), {}).pop(reporter_id(), None)
            return
        self._write(lambda client: client.hdel(_key(task, tier), reporter_id()))

    def unavailable(self, tiers: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
        """The distinct errors live reports give for each tier that some worker cannot load."""
        pairs = list(tiers)
        now = time.time()
        if self._redis_url is None:
            with _MEMORY_LOCK:
                found = {pair: dict(_MEMORY.get(pair, {})) for pair in pairs}
            reports = {
                pair: [error for error, expires in by_worker.values() if expires > now]
                for pair, by_worker in found.items()
            }
        else:
            pipeline = _redis(self._redis_url).pipeline(transaction=False)
            for task, tier in pairs:
                pipeline.hgetall(_key(task, tier))
            reports = {
                pair: _live_errors(fields, now)
                for pair, fields in zip(pairs, pipeline.execute(), strict=True)
            }
        return {pair: sorted(set(errors)) for pair, errors in reports.items() if errors}

    def _write(self, command: Any) -> None:
        try:
            command(_redis(self._redis_url or ""))
        except Exception as exc:  # a report is advice for operators: inference goes on without it
            log.warning("tier_report_failed", error=repr(exc))


def describe(errors: list[str]) -> str:
    """What GET /v1/models and /readyz say about a tier, given the errors workers report."""
    return "unavailable: " + "; ".join(errors) if errors else "ok"


def _key(task: str, tier: str) -> str:
    return f"{KEY_PREFIX}:{task}:{tier}"


def _hset_with_expiry(client: Any, key: str, value: str, ttl: float) -> None:
    pipeline = client.pipeline(transaction=True)
    pipeline.hset(key, reporter_id(), value)
    # The whole hash goes when no worker has refreshed it for a ttl; stale fields of workers
    # that died sooner are skipped by their own expiry when read.
    pipeline.expire(key, int(ttl) + 1)
    pipeline.execute()


def _live_errors(fields: dict[str, str], now: float) -> list[str]:
    errors: list[str] = []
    for raw in fields.values():
        try:
            report = json.loads(raw)
        except ValueError:
            continue
        if float(report.get("expires", 0)) > now:
            errors.append(str(report.get("error", "")))
    return errors


@lru_cache(maxsize=4)
def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
    )
