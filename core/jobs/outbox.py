"""Transactional outbox: messages are rows first and broker messages only after commit.

``add_run_items`` writes the rows inside the caller's transaction and asks for an immediate
relay once that transaction commits (low latency); the periodic relay task sends anything that
immediate attempt missed (process died, broker down). A row sent twice is harmless: workers skip
items that are already finished or leased.

The immediate relay coalesces: while one thread of a process relays, rows that other threads
commit meanwhile wait for it and go in its next round (one transaction and a few broker
messages for many jobs, instead of both per job); with nobody relaying, a commit relays its own
rows at once. Run-items rows of one task and queue are packed into shared messages of up to
``chunk_size`` items, so a burst of single-input jobs costs a few broker messages.

Each relay sends the kinds its sender knows: Celery's relay (beat, maintenance queue) the
``run_items`` rows, the Kafka results relay (``inferq ingest``) the ``kafka_result`` rows. Kept
apart, a Kafka outage cannot hold up job dispatch, and workers need no Kafka client. A
``kafka_result`` row may be published twice (sent, then the process died before marking it
sent); consumers of the results topic dedupe on the record key, the request's message id.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.orm import Session

from core.broker import RunItems, get_celery, run_queue, send_run_items
from core.config import get_settings
from core.db.bulk import among
from core.db.models import Job, KafkaRecord, OutboxMessage, utcnow
from core.db.session import after_commit

log = structlog.get_logger(__name__)

RUN_ITEMS_KIND = "run_items"
KAFKA_RESULT_KIND = "kafka_result"
DEFAULT_TOKENS = 32  # token estimate of an item re-sent without its text at hand
DEFAULT_MESSAGE_ITEMS = 32  # the periodic relay's message size (Settings.chunk_size's default)


def estimate_tokens(text: str) -> int:
    """About four characters a word piece, plus [CLS] and [SEP]; good enough to size a batch."""
    return len(text) // 4 + 2


Sender = Callable[[Sequence[OutboxMessage]], None]


@dataclass(frozen=True)
class RunRequest:
    """Items of one job to dispatch; ``queue`` is the job's priority (``send_to_celery`` picks
    the broker queue from it and the task); ``tokens`` (estimated per item, same order) lets
    workers flush a micro-batch on its token budget."""

    job_id: str
    item_ids: Sequence[int]
    task: str
    queue: str
    request_id: str | None
    tokens: Sequence[int] | None = None


def add_run_items(
    session: Session,
    job_id: str,
    item_ids: Sequence[int],
    *,
    task: str,
    queue: str,
    chunk_size: int,
    request_id: str | None,
    tokens: Sequence[int] | None = None,
) -> list[int]:
    """Outbox rows for a job's items, ``chunk_size`` ids a row."""
    request = RunRequest(job_id, item_ids, task, queue, request_id, tokens)
    return add_run_items_many(session, [request], chunk_size=chunk_size)


def add_run_items_many(
    session: Session, requests: Sequence[RunRequest], *, chunk_size: int
) -> list[int]:
    """Outbox rows for several jobs' items (``chunk_size`` ids a row), written in one statement
    and relayed together once the transaction commits."""
    payloads = [payload for request in requests for payload in _chunks(request, chunk_size)]
    if not payloads:
        return []
    now = utcnow()
    values = [{"kind": RUN_ITEMS_KIND, "payload": p, "created_at": now} for p in payloads]
    # One INSERT for every row on every backend (an ORM flush inserts row by row on SQLite).
    statement = insert(OutboxMessage).returning(OutboxMessage.id, sort_by_parameter_order=True)
    ids = list(session.scalars(statement, values))
    rows = [OutboxMessage(id=i, **v) for i, v in zip(ids, values, strict=True)]
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    after_commit(session, lambda: relay_after_commit(engine, rows, chunk_size))
    return [row.id for row in rows]


def _chunks(request: RunRequest, chunk_size: int) -> list[dict[str, Any]]:
    item_ids = list(request.item_ids)
    estimates = (
        list(request.tokens) if request.tokens is not None else [DEFAULT_TOKENS] * len(item_ids)
    )
    return [
        {
            "job_id": request.job_id,
            "item_ids": item_ids[start : start + chunk_size],
            "task": request.task,
            "tokens": sum(estimates[start : start + chunk_size]),
            "queue": request.queue,
            "request_id": request.request_id,
        }
        for start in range(0, len(item_ids), chunk_size)
    ]


def add_kafka_results(session: Session, jobs: Sequence[Job]) -> int:
    """When jobs that came from Kafka are settled, a row each in the same transaction asks for
    its outcome to be published; the payload names the job, the record is built when it is
    sent. Whether a job came from Kafka is read from ``kafka_records`` (one query for all),
    which only ``inferq ingest`` writes, so no HTTP caller can publish a record under someone
    else's message id. Returns how many rows were added."""
    if not jobs:
        return 0
    message_ids: dict[uuid.UUID, str] = {}
    for job_id, message_id in session.execute(
        select(KafkaRecord.job_id, KafkaRecord.message_id)
        .where(among(session, KafkaRecord.job_id, [job.id for job in jobs]))
        .order_by(KafkaRecord.id)
    ).tuples():
        message_ids.setdefault(job_id, message_id)
    session.add_all(
        OutboxMessage(
            kind=KAFKA_RESULT_KIND, payload={"job_id": str(job_id), "message_id": message_id}
        )
        for job_id, message_id in message_ids.items()
    )
    return len(message_ids)


def send_to_celery(rows: Sequence[OutboxMessage], max_items: int = DEFAULT_MESSAGE_ITEMS) -> None:
    """Run-items rows as broker messages: rows of one task and queue share a message until it
    holds ``max_items`` items (a row is never split: it is one job's chunk).

    A row's ``queue`` is its priority; the broker queue is chosen here, when it is sent
    (``run_queue``: a task in INFERQ_TASK_QUEUES goes to its own queues). Every run-items
    message — submission, retry, sweeper re-drive, batch top-up — passes through here, and a row
    written before the setting changed still reaches the workers that serve its task now."""
    settings = get_settings()
    groups: dict[tuple[str, str | None], list[OutboxMessage]] = defaultdict(list)
    for row in rows:
        if row.kind != RUN_ITEMS_KIND:
            raise ValueError(f"unknown outbox message kind {row.kind!r}")
        task = row.payload.get("task")
        groups[(run_queue(row.payload["queue"], task, settings), task)].append(row)
    app = get_celery()
    for (queue, task), grouped in groups.items():
        for message in _pack(grouped, max_items):
            payloads = [row.payload for row in message]
            send_run_items(
                app,
                [RunItems(p["job_id"], p["item_ids"], p.get("request_id")) for p in payloads],
                queue=queue,
                task=task,
                tokens=sum(
                    p.get("tokens") or DEFAULT_TOKENS * len(p["item_ids"]) for p in payloads
                ),
            )


def _pack(rows: list[OutboxMessage], max_items: int) -> list[list[OutboxMessage]]:
    messages: list[list[OutboxMessage]] = [[]]
    items = 0
    for row in rows:
        size = len(row.payload["item_ids"])
        if messages[-1] and items + size > max_items:
            messages.append([])
            items = 0
        messages[-1].append(row)
        items += size
    return messages


def relay(
    session: Session,
    send: Sender = send_to_celery,
    *,
    ids: Iterable[int] | None = None,
    limit: int = 500,
    kinds: Collection[str] = (RUN_ITEMS_KIND,),
) -> int:
    """Send unsent rows of ``kinds`` and mark them sent. The rows were committed by an earlier
    transaction; locking them (SKIP LOCKED) only stops two relays from sending the same row
    concurrently."""
    query = (
        select(OutboxMessage)
        .where(OutboxMessage.sent_at.is_(None), OutboxMessage.kind.in_(list(kinds)))
        .order_by(OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if ids is not None:
        query = query.where(among(session, OutboxMessage.id, list(ids)))
    rows = session.scalars(query).all()
    if rows:
        send(rows)
        mark_sent(session, [row.id for row in rows])
    return len(rows)


class _Coalescer:
    """Rows committed while another thread of this process relays wait for that thread: it
    sends them in its next round. Hand-written: a background thread would make a commit's own
    send asynchronous even when nothing else is going on, and no library does this hand-off.

    The rows are sent from memory (the committing session just wrote them) and then marked sent
    with one UPDATE. A periodic relay running in between may send a row a second time, which
    is harmless: workers skip items that are finished or leased."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Engine, list[OutboxMessage]] = defaultdict(list)
        self._relaying: set[Engine] = set()

    def relay(self, engine: Engine, rows: list[OutboxMessage], max_items: int) -> None:
        with self._lock:
            self._pending[engine].extend(rows)
            if engine in self._relaying:
                return  # the thread relaying for this engine takes them in its next round
            self._relaying.add(engine)
        while True:
            with self._lock:
                batch = self._pending.pop(engine, [])
                if not batch:
                    self._relaying.discard(engine)
                    return
            try:
                send_to_celery(batch, max_items)
                with Session(engine) as session, session.begin():
                    mark_sent(session, [row.id for row in batch])
            except Exception as exc:  # the periodic relay will send these rows; commits stand
                ids = [row.id for row in batch[:50]]
                log.warning("immediate_relay_failed", outbox_ids=ids, error=repr(exc))


_coalescer = _Coalescer()


def relay_after_commit(
    engine: Engine, rows: list[OutboxMessage], max_items: int = DEFAULT_MESSAGE_ITEMS
) -> None:
    _coalescer.relay(engine, rows, max_items)


def mark_sent(session: Session, ids: Sequence[int]) -> None:
    session.execute(
        update(OutboxMessage)
        .where(among(session, OutboxMessage.id, ids), OutboxMessage.sent_at.is_(None))
        .values(sent_at=utcnow()),
        execution_options={"synchronize_session": False},
    )


def purge_sent(session: Session, older_than_seconds: float) -> int:
    from datetime import timedelta

    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    result = session.execute(
        delete(OutboxMessage).where(
            OutboxMessage.sent_at.is_not(None), OutboxMessage.sent_at < cutoff
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
