"""Rate limits per tenant and route class, counted in storage every API process shares.

A route class is the scope the route needs ("jobs:write", "batches:read", ...); classes without
a limit of their own share "default". Counting uses the ``limits`` package's sliding window
counter (two counters a window in Redis, one script call a hit), so N API processes spend one
budget. The answer carries the IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers):
``RateLimit-Policy: "jobs:write";q=600;w=60`` and ``RateLimit: "jobs:write";r=598;t=41``.

If the storage cannot be reached the limiter fails open: the request goes on, a warning is
logged and ``inferq_rate_limiter_errors_total`` counts it; the storage is then left alone for
a few seconds so an outage does not add a timeout to every request.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import structlog
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from core.errors import InvalidInput
from core.security.scopes import SCOPES
from core.telemetry.metrics import RATE_LIMITED, RATE_LIMITER_ERRORS

log = structlog.get_logger(__name__)

DEFAULT_CLASS = "default"
STORAGE_TIMEOUT_SECONDS = 0.5
STORAGE_RETRY_SECONDS = 5.0

RateTable = dict[str, tuple[RateLimitItem, ...]]


def parse_rate_limits(text: str) -> RateTable:
    """``"jobs:write=20/second,600/minute;default=3000/minute"``: route class to its limits."""
    table: RateTable = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, _, value = (piece.strip() for piece in part.partition("="))
        if name != DEFAULT_CLASS and name not in SCOPES:
            raise InvalidInput(
                f"rate limit for {name!r}: name a scope ({', '.join(SCOPES)}) or 'default'"
            )
        try:
            items = tuple(parse_many(value))
        except ValueError as exc:
            raise InvalidInput(
                f"rate limit {value!r} for {name}: use e.g. 600/minute or 10/second,600/minute"
            ) from exc
        table[name] = items
    return table


@dataclass(frozen=True)
class Decision:
    allowed: bool
    headers: dict[str, str]  # RateLimit-Policy and RateLimit
    retry_after: int  # seconds until the most depleted limit has room again


class RateLimiter:
    """``check(tenant_id, route_class, override)`` counts one request; see the module doc."""

    def __init__(self, defaults: str, storage_url: str) -> None:
        self.defaults = parse_rate_limits(defaults)
        options: dict[str, float | str | bool] = {}
        if storage_url.startswith(("redis://", "rediss://")):
            options = {
                "socket_timeout": STORAGE_TIMEOUT_SECONDS,
                "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS,
            }
        storage = storage_from_string(storage_url, wrap_exceptions=True, **options)
        self.strategy = SlidingWindowCounterRateLimiter(storage)
        self._overrides: dict[str, RateTable] = {}
        self._lock = threading.Lock()
        self._skip_until = 0.0

    def limits_for(self, route_class: str, override: str | None) -> tuple[RateLimitItem, ...]:
        table = self.defaults
        if override is not None:
            table = {**table, **self._parsed(override)}
        return table.get(route_class, table.get(DEFAULT_CLASS, ()))

    def check(self, tenant_id: int, route_class: str, override: str | None) -> Decision | None:
        """The decision, or None when nothing limits this class or the storage is down."""
        items = self.limits_for(route_class, override)
        if not items or time.monotonic() < self._skip_until:
            return None
        identity = ("inferq", str(tenant_id), route_class)
        try:
            allowed = all(self.strategy.hit(item, *identity) for item in items)
            stats = [self.strategy.get_window_stats(item, *identity) for item in items]
        except StorageError as exc:
            self._storage_down(exc)
            return None
        if not allowed:
            RATE_LIMITED.labels(route_class).inc()
        now = time.time()
        policies, lowest, reset = [], None, 0
        for item, (reset_time, remaining) in zip(items, stats, strict=True):
            name = route_class if len(items) == 1 else f"{route_class}@{item.get_expiry()}s"
            policies.append(f'"{name}";q={item.amount};w={item.get_expiry()}')
            seconds = max(0, math.ceil(reset_time - now))
            if seconds == 0 and remaining < item.amount:
                # limits reports a window whose TTL is exactly its length (the first hit) as
                # resetting now: it resets a whole window from now.
                seconds = item.get_expiry()
            if lowest is None or remaining < lowest[1]:
                lowest = (name, remaining, seconds)
            if remaining <= 0:
                reset = max(reset, seconds)
        assert lowest is not None
        name, remaining, seconds = lowest
        headers = {
            "RateLimit-Policy": ", ".join(policies),
            "RateLimit": f'"{name}";r={max(0, remaining)};t={seconds}',
        }
        return Decision(allowed, headers, max(1, reset))

    def _parsed(self, override: str) -> RateTable:
        with self._lock:
            table = self._overrides.get(override)
        if table is None:
            try:
                table = parse_rate_limits(override)
            except InvalidInput as exc:  # set-limits validates; a hand-edited row is ignored
                log.warning("tenant_rate_limits_invalid", error=exc.detail)
                table = {}
            with self._lock:
                self._overrides[override] = table
        return table

    def _storage_down(self, exc: StorageError) -> None:
        RATE_LIMITER_ERRORS.inc()
        self._skip_until = time.monotonic() + STORAGE_RETRY_SECONDS
        log.warning(
            "rate_limiter_unavailable",
            error=repr(exc.storage_error),
            failing_open_for_seconds=STORAGE_RETRY_SECONDS,
        )
