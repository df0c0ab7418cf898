"""Micro-batching across broker messages, on top of celery-batches.

celery-batches receives messages in the worker's main process and hands buffered ones to the
pool as one call. Its own rule (every N messages or on a timer) knows neither how many inputs a
message carries nor which queue it came from, so this subclass decides what a batch is:

* a batch is flushed when its task's buffered inputs reach ``max_items`` or their estimated
  tokens reach ``token_budget``, or when the oldest has waited ``max_wait_ms``;
* a batch is only formed when a pool process is free, so work waits here, where the next batch
  can still take interactive messages first, rather than in the pool's queue in arrival order;
* within a flush, interactive messages go first; bulk fills what is left, so it still moves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from core.config import BatchPolicy
from core.telemetry.metrics import BATCH_FLUSHES

log = structlog.get_logger(__name__)

PRIORITY = {"interactive": 0, "bulk": 1}


@dataclass
class Waiting:
    request: Any
    task: str
    items: int
    tokens: int
    priority: int
    arrived: float


class TokenBudgetBatches(Batches):  # type: ignore[misc]
    abstract = True
    #: Limits per inference task; a message of a task without its own entry uses "default".
    policies: dict[str, BatchPolicy] = {"default": BatchPolicy()}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__()
        self._waiting: list[Waiting] = []
        self._in_flight = 0
        self._flushing = False

    def policy(self, task: str) -> BatchPolicy:
        return self.policies.get(task) or self.policies["default"]

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Callable[..., None]:
        """Called each time the consumer (re)connects. After a broker connection loss the pool
        children that held batches are terminated (worker_cancel_long_running_tasks_on_
        connection_loss) without either callback firing, and the waiting messages belong to
        the dead connection (they cannot be acked; the broker or the sweeper sends their items
        again). So every (re)start begins with free slots and an empty wait list, or the
        worker would wait forever for batches that will never return."""
        if self._in_flight or self._waiting:
            log.warning(
                "batches_reset_on_reconnect",
                in_flight=self._in_flight,
                waiting_messages=len(self._waiting),
            )
        self._in_flight = 0
        self._waiting = []
        while not self._buffer.empty():
            self._buffer.get_nowait()
        timer: Any = getattr(self, "_tref", None)
        if timer is not None:  # restarted by the first message of the new connection
            timer.cancel()
            self._tref = None
        buffer_message = super().Strategy(task, app, consumer)

        def handle(
            message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any
        ) -> None:
            buffer_message(message, body, ack, reject, callbacks, **kw)
            self._take_buffered()
            self._do_flush()

        return handle

    def _take_buffered(self) -> None:
        while not self._buffer.empty():
            request = self._buffer.get_nowait()
            kwargs = request.kwargs or {}
            items = int(kwargs.get("n_items") or 1)
            queue = (request.delivery_info or {}).get("routing_key", "interactive")
            self._waiting.append(
                Waiting(
                    request,
                    str(kwargs.get("task") or "default"),
                    items,
                    int(kwargs.get("tokens") or items),
                    PRIORITY.get(queue, 0),
                    time.monotonic(),
                )
            )

    def _do_flush(self) -> None:
        """Called on every message, by the timer, and when a batch returns."""
        if self._flushing:  # the solo pool runs a batch inline and calls back into here
            return
        self._flushing = True
        try:
            self._take_buffered()
            while self._waiting and self._in_flight < (self._pool.limit or 1):
                reason = self._ready()
                if reason is None:
                    break
                self._submit(self._next_batch(), reason)
            timer: Any = getattr(self, "_tref", None)
            if not self._waiting and self._in_flight == 0 and timer is not None:
                timer.cancel()  # idle: the next message starts the timer again
                self._tref = None
        finally:
            self._flushing = False

    def _ready(self) -> str | None:
        totals: dict[str, list[int]] = {}
        for waiting in self._waiting:
            counts = totals.setdefault(waiting.task, [0, 0])
            counts[0] += waiting.items
            counts[1] += waiting.tokens
            policy = self.policy(waiting.task)
            if counts[0] >= policy.max_items:
                return "max_items"
            if counts[1] >= policy.token_budget:
                return "token_budget"
        oldest = min(self._waiting, key=lambda w: w.arrived)
        if time.monotonic() - oldest.arrived >= self.policy(oldest.task).max_wait_ms / 1000:
            return "max_wait"
        return None

    def _next_batch(self) -> list[Waiting]:
        """Interactive first, then by arrival; stop at the first task's item or token limit."""
        ordered = sorted(self._waiting, key=lambda w: (w.priority, w.arrived))
        batch: list[Waiting] = []
        totals: dict[str, list[int]] = {}
        for waiting in ordered:
            counts = totals.setdefault(waiting.task, [0, 0])
            policy = self.policy(waiting.task)
            full = counts[0] + waiting.items > policy.max_items or (
                counts[1] + waiting.tokens > policy.token_budget
            )
            if batch and full:
                break
            batch.append(waiting)
            counts[0] += waiting.items
            counts[1] += waiting.tokens
        taken = {id(w) for w in batch}
        self._waiting = [w for w in self._waiting if id(w) not in taken]
        return batch

    def _submit(self, batch: list[Waiting], reason: str) -> None:
        BATCH_FLUSHES.labels(reason).inc()
        log.info(
            "batch_flushed",
            reason=reason,
            messages=len(batch),
            items=sum(w.items for w in batch),
            interactive=sum(1 for w in batch if w.priority == 0),
        )
        self._in_flight += 1
        self.flush([w.request for w in batch])

    def flush(self, requests: list[Any]) -> Any:
        """celery-batches' flush, plus: free the pool slot when the batch returns, and give the
        messages back to the broker if the pool process dies (reject-on-worker-lost; the item
        attempt cap in PostgreSQL stops a poison input from looping)."""
        late = [request for request in requests if request.task.acks_late]

        def accepted(*_: Any) -> None:
            for request in requests:
                if not request.task.acks_late:
                    request.acknowledge()

        def returned(*_: Any) -> None:
            for request in late:
                request.acknowledge()
            self._batch_returned()

        def lost(*_: Any) -> None:
            for request in late:
                request.reject(requeue=True)
            self._batch_returned()

        simple = ([SimpleRequest.from_request(request) for request in requests],)
        return self._pool.apply_async(
            apply_batches_task,
            (self, simple, 0, None),
            accept_callback=accepted,
            callback=returned,
            error_callback=lost,
        )

    def _batch_returned(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._do_flush()
