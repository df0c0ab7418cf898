"""Circuit breakers per (task, tier), so a failing tier is skipped quickly instead of being
retried on every batch, and probed again (half-open) after its recovery timeout.

Built on pybreaker. In distributed mode the state lives in Redis, shared by every worker and
readable by the API for GET /v1/models; in embedded mode it lives in the process. Operators can
force a tier open with INFERQ_CIRCUIT_FORCE_OPEN=task:tier,...
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pybreaker

from core.config import Settings

FORCED_OPEN = "forced-open"

_MEMORY: dict[tuple[str, str], pybreaker.CircuitMemoryStorage] = {}
_MEMORY_LOCK = threading.Lock()


@dataclass(frozen=True)
class CircuitPolicy:
    failure_threshold: int
    recovery_seconds: float
    forced_open: frozenset[tuple[str, str]]

    @classmethod
    def from_settings(cls, settings: Settings) -> CircuitPolicy:
        return cls(
            settings.circuit_failure_threshold,
            settings.circuit_recovery_seconds,
            parse_forced(settings.circuit_force_open),
        )


def parse_forced(value: str) -> frozenset[tuple[str, str]]:
    pairs = (part.strip().split(":", 1) for part in value.split(",") if part.strip())
    return frozenset((task.strip(), tier.strip()) for task, tier in pairs)


class Circuits:
    """The breakers of one process, created on first use."""

    def __init__(self, policy: CircuitPolicy, redis_url: str | None = None) -> None:
        self.policy = policy
        self._redis_url = redis_url
        self._breakers: dict[tuple[str, str], pybreaker.CircuitBreaker] = {}
        self._lock = threading.Lock()

    def breaker(self, task: str, tier: str) -> pybreaker.CircuitBreaker:
        key = (task, tier)
        with self._lock:
            if key not in self._breakers:
                self._breakers[key] = pybreaker.CircuitBreaker(
                    fail_max=self.policy.failure_threshold,
                    reset_timeout=self.policy.recovery_seconds,
                    state_storage=self._storage(task, tier),
                    name=f"{task}:{tier}",
                )
            return self._breakers[key]

    def _storage(self, task: str, tier: str) -> pybreaker.CircuitBreakerStorage:
        if self._redis_url is None:
            # One state per process, so the API of an embedded deployment sees its worker's.
            with _MEMORY_LOCK:
                return _MEMORY.setdefault(
                    (task, tier), pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
                )
        return pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED,
            _redis(self._redis_url),
            namespace=f"inferq:circuit:{task}:{tier}",
        )

    def forced_open(self, task: str, tier: str) -> bool:
        return (task, tier) in self.policy.forced_open

    def state(self, task: str, tier: str) -> str:
        if self.forced_open(task, tier):
            return FORCED_OPEN
        return str(self.breaker(task, tier).current_state)


@lru_cache(maxsize=4)
def _redis(url: str) -> Any:
    import redis

    # pybreaker stores bytes; decode_responses must stay off.
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
