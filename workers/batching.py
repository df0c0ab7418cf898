"""Micro-batching across broker messages, on top of celery-batches.

celery-batches buffers messages in the worker's main process and flushes them to the pool as
one call, either every ``flush_every`` messages or on a ``flush_interval`` timer. A message here
carries a chunk of item ids with its item count and estimated tokens, so this subclass also
flushes as soon as the buffered *items* reach ``max_items`` or their tokens reach the token
budget, whichever comes first, and records why each batch was flushed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog
from celery_batches import Batches

from core.config import BatchPolicy
from core.telemetry.metrics import BATCH_FLUSHES

log = structlog.get_logger(__name__)


class TokenBudgetBatches(Batches):  # type: ignore[misc]
    abstract = True
    #: Limits per inference task; a message of a task without its own entry uses "default".
    policies: dict[str, BatchPolicy] = {"default": BatchPolicy()}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__()
        self._buffered: dict[str, list[int]] = {}  # task -> [items, tokens]
        self._reason = "max_wait"
        self._counter_lock = threading.Lock()

    def policy(self, task: str) -> BatchPolicy:
        return self.policies.get(task) or self.policies["default"]

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Callable[..., None]:
        buffer_message = super().Strategy(task, app, consumer)

        def handle(
            message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any
        ) -> None:
            buffer_message(message, body, ack, reject, callbacks, **kw)
            task_name, items, tokens = _size_of(message)
            with self._counter_lock:
                counts = self._buffered.setdefault(task_name, [0, 0])
                counts[0] += items
                counts[1] += tokens
                reason = self._flush_reason(task_name, *counts)
            if reason is not None:
                self._reason = reason
                self._do_flush()

        return handle

    def _flush_reason(self, task: str, items: int, tokens: int) -> str | None:
        policy = self.policy(task)
        if items >= policy.max_items:
            return "max_items"
        if tokens >= policy.token_budget:
            return "token_budget"
        return None

    def flush(self, requests: Any) -> Any:
        with self._counter_lock:
            reason, self._reason = self._reason, "max_wait"
            items = sum(counts[0] for counts in self._buffered.values())
            self._buffered = {}
        BATCH_FLUSHES.labels(reason).inc()
        log.info("batch_flushed", reason=reason, messages=len(requests), items=items)
        return super().flush(requests)


def _size_of(message: Any) -> tuple[str, int, int]:
    """Task, items and estimated tokens of a message (the outbox relay sends them as kwargs)."""
    try:
        kwargs = message.payload[1] if isinstance(message.payload, list | tuple) else {}
    except (AttributeError, IndexError, TypeError):
        kwargs = {}
    items = int(kwargs.get("n_items") or 1)
    return str(kwargs.get("task") or "default"), items, int(kwargs.get("tokens") or items)
