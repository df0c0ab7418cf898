"""The Kafka door: ``inferq ingest`` turns records of ``inferq.requests`` into jobs.

One batch, in this order (invariant 2: an offset is stored only after its work is durable):

1. ``consume()`` up to ``kafka_batch_size`` records;
2. parse and validate each one (no I/O): a request, or a reason to dead-letter it;
3. one transaction: each request not seen before goes through ``submit_job`` under the
   ``kafka`` tenant with idempotency key ``kafka:<id>``, and its (topic, partition, offset) is
   recorded in ``kafka_records`` (unique) -> commit;
4. the rejects go to the dead-letter topic with their original key, value and headers plus a
   JSON reason, through the idempotent producer, and every delivery is confirmed;
5. ``store_offsets()``; auto-commit sends them to the broker (and ``close()`` on shutdown).

A request the ``kafka`` tenant's quota of pending inputs refuses is not dead-lettered: its
partition stops there and is paused until the work in flight drains (producers.kafka_quota).

A redelivered record finds its ``kafka_records`` row and is skipped; the same message produced
twice (two offsets, one id) finds its job through the idempotency key. If step 3 or 4 fails
(database or broker down), nothing is stored: the consumer seeks back to the batch's first
offsets and tries again after a back-off, so an outage never turns into a crash loop.

The process serves its metrics (``inferq_kafka_consumer_lag`` per partition, see
producers.kafka_lag, and ``inferq_kafka_paused_partitions``) on ``INFERQ_METRICS_PORT``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.config import Settings
from core.db.models import KafkaRecord, utcnow
from core.db.session import Database
from core.errors import IdempotencyConflict, InvalidInput, QuotaExceeded, UnknownTask
from core.jobs import outbox
from core.jobs.state import TERMINAL_JOB
from core.jobs.submit import JobRequest, Submitted, submit_job
from core.jobs.validation import check_metadata, check_task, check_text
from core.security.quotas import PendingQuota
from producers.kafka_lag import FROM_BEGINNING, ConsumerLag
from producers.kafka_quota import Partition, QuotaPause, kafka_tenant
from producers.kafka_results import (
    Headers,
    Outgoing,
    producer_config,
    publish_results,
    send_confirmed,
)
from schemas.kafka import (
    DLQ_REASON_HEADER,
    MAX_ID_CHARS,
    DeadLetterError,
    DeadLetterReason,
    KafkaRequest,
)

log = structlog.get_logger(__name__)

RESULTS_INTERVAL_SECONDS = 1.0  # how often pending results are looked for when none are due
RESULTS_PER_ROUND = 500  # a full round is followed by another at once
MAX_DETAIL_CHARS = 1000

Quota = tuple[int, int | None, PendingQuota]  # the kafka tenant, its limit, this batch's count


@dataclass(frozen=True)
class Rejected:
    error: DeadLetterError
    detail: str


@dataclass
class Outcome:
    """What one batch did with its records: ``handled`` ones (their offsets are stored), the
    ``rejected`` among them (dead-lettered), and the partitions ``refused`` by the quota, each
    stopped at the offset of its first refused record (nothing from there on was handled)."""

    handled: list[Record] = field(default_factory=list)
    rejected: list[tuple[Record, Rejected]] = field(default_factory=list)
    refused: dict[Partition, int] = field(default_factory=dict)
    refusal: QuotaExceeded | None = None

    def reject(self, record: Record, why: Rejected) -> None:
        self.handled.append(record)
        self.rejected.append((record, why))

    def stop(self, record: Record, refusal: QuotaExceeded) -> None:
        self.refused[(record.topic, record.partition)] = record.offset
        self.refusal = self.refusal or refusal

    def stopped(self, record: Record) -> bool:
        return (record.topic, record.partition) in self.refused


@dataclass(frozen=True)
class Record:
    """A consumed record: what an error-free message always carries."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    @classmethod
    def of(cls, message: Message) -> Record:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        headers = message.headers() or []
        listed = list(headers.items()) if isinstance(headers, dict) else list(headers)
        return cls(topic, partition, offset, message.key(), message.value(), listed)


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        "auto.offset.reset": "earliest",  # a new group starts from the beginning (as KEDA assumes)
        **settings.kafka_options,
        **settings.kafka_consumer_options,
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": settings.kafka_group_id,
        # Commit in the background, but only offsets we stored, and we store them after commit.
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
    }


# --- parsing: bytes -> a request or a reason --------------------------------------------------


def parse_request(value: bytes | None, settings: Settings) -> KafkaRequest | Rejected:
    document = _decode(value)
    if isinstance(document, Rejected):
        return document
    try:
        request = KafkaRequest.model_validate(document)
    except ValidationError as exc:
        return Rejected("invalid-envelope", _describe(exc))
    try:
        check_text(request.id, max_chars=MAX_ID_CHARS, where="id")
        check_task(request.task)
        check_text(request.text, max_chars=settings.max_text_chars, where="text")
        check_metadata(request.metadata)
    except UnknownTask as exc:
        return Rejected("unknown-task", exc.detail)
    except InvalidInput as exc:
        return Rejected("invalid-input", exc.detail)
    return request


def _decode(value: bytes | None) -> Any:
    if value is None:
        return Rejected("empty", "the record has no value; send a JSON request")
    try:
        return json.loads(value.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Rejected("invalid-utf8", f"the value is not valid UTF-8 at byte {exc.start}")
    except json.JSONDecodeError as exc:
        return Rejected("invalid-json", f"the value is not JSON: {exc.msg} at char {exc.pos}")
    except RecursionError:
        return Rejected("invalid-json", "the value is JSON nested too deeply")


def _describe(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    ]
    return (
        'expected {"id", "task", "text", "metadata"?} with string id, task and text; '
        + "; ".join(problems)
    )[:MAX_DETAIL_CHARS]


# --- one batch ---------------------------------------------------------------------------------


class Ingest:
    """Consumes, submits, dead-letters and stores offsets; see the module docstring."""

    def __init__(
        self, settings: Settings, database: Database, consumer: Consumer, producer: Producer
    ) -> None:
        self.settings = settings
        self.database = database
        self.consumer = consumer
        self.producer = producer
        self.paused = QuotaPause(consumer, database, settings)
        reset = str(consumer_config(settings)["auto.offset.reset"]).lower()
        self.lag = ConsumerLag(consumer, from_beginning=reset in FROM_BEGINNING)

    def records(self, messages: Sequence[Message]) -> list[Record]:
        """The consumed records, less any of a paused partition (fetched before its pause)."""
        records = [Record.of(message) for message in messages if _is_record(message)]
        return [r for r in records if not self.paused.holds(r.topic, r.partition)]

    def handle(self, records: Sequence[Record]) -> None:
        """Process one batch completely, or raise having stored no offset. A partition whose
        request the quota refused stops at it and is paused, its offset not stored."""
        parsed = [(record, parse_request(record.value, self.settings)) for record in records]
        if any(not isinstance(request, Rejected) for _, request in parsed):
            with self.database.transaction() as session:
                outcome = self._submit_in_order(session, parsed)
        else:  # nothing to submit, no transaction: every record is dead-lettered
            rejected = [(record, why) for record, why in parsed if isinstance(why, Rejected)]
            outcome = Outcome(handled=list(records), rejected=rejected)
        send_confirmed(
            self.producer,
            self.settings.kafka_dlq_topic,
            [_dead_letter(record, why) for record, why in outcome.rejected],
        )
        self._store_offsets(outcome.handled)
        if outcome.refusal is not None:
            extra = outcome.refusal.extra
            self.paused.pause(outcome.refused, extra["pending_inputs"], extra["max_pending_inputs"])

    def _submit_in_order(
        self, session: Session, parsed: Sequence[tuple[Record, KafkaRequest | Rejected]]
    ) -> Outcome:
        """Submit each request in order under one quota count; a refusal stops its partition
        (the records after it are left for after the resume), the other partitions go on."""
        tenant_id, limit = kafka_tenant(session, self.settings)
        quota, outcome = PendingQuota(session), Outcome()
        for record, request in parsed:
            if outcome.stopped(record):
                continue
            if isinstance(request, Rejected):
                outcome.reject(record, request)
                continue
            try:
                why = self._submit(session, (tenant_id, limit, quota), record, request)
            except QuotaExceeded as exc:
                outcome.stop(record, exc)
                continue
            if why is None:
                outcome.handled.append(record)
            else:
                outcome.reject(record, why)
        return outcome

    def _submit(
        self, session: Session, quota: Quota, record: Record, request: KafkaRequest
    ) -> Rejected | None:
        """Submit one request unless its record was submitted before; a reason to dead-letter
        it, or QuotaExceeded (nothing written) when the tenant's work in flight is full."""
        where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        earlier = session.scalars(select(KafkaRecord.message_id).filter_by(**where)).all()
        if request.id in earlier:
            log.info("kafka_record_redelivered", **where)
            return None
        if earlier:  # this position held another request: the broker lost its log
            log.warning("kafka_offset_reused", earlier_ids=earlier[:3], id=request.id, **where)
        try:
            with session.begin_nested():
                submitted = self._submit_new(session, quota, record, request)
        except UnknownTask as exc:
            return Rejected("unknown-task", exc.detail)
        except IdempotencyConflict:
            detail = f"id {request.id!r} was already used for a different request; use a new id"
            return Rejected("idempotency-conflict", detail)
        except InvalidInput as exc:
            return Rejected("invalid-input", exc.detail)
        except IntegrityError:  # another consumer (mid-rebalance) recorded this very record
            log.info("kafka_record_taken", **where)
            return None
        job_id, created = str(submitted.job.id), submitted.created
        log.info("kafka_job_submitted", job_id=job_id, id=request.id, created=created, **where)
        return None

    def _submit_new(
        self, session: Session, quota: Quota, record: Record, request: KafkaRequest
    ) -> Submitted:
        job_request = JobRequest(
            request.task,
            [request.text],
            priority=self.settings.kafka_priority,
            metadata=request.metadata,
        )
        tenant_id, limit, pending = quota
        submitted = submit_job(
            session,
            self.settings,
            tenant_id=tenant_id,
            request=job_request,
            idempotency_key=f"kafka:{request.id}",
            request_id=uuid.uuid4().hex,
            max_pending_inputs=limit,
            quota=pending,
        )
        job = submitted.job
        position = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        session.add(KafkaRecord(**position, message_id=request.id, job_id=job.id))
        session.flush()
        if job.status in TERMINAL_JOB:
            # Answered from the cache inside submit_job, before this record existed, or the same
            # request sent again after its job finished: publish its result (again; results
            # are at least once, keyed by the request's id). A job still running publishes it
            # when it settles.
            outbox.add_kafka_results(session, [job])
        return submitted

    def _store_offsets(self, records: Sequence[Record]) -> None:
        if not records:
            return
        last: dict[tuple[str, int], int] = {}
        for record in records:
            position = (record.topic, record.partition)
            last[position] = max(last.get(position, -1), record.offset)
        offsets = [TopicPartition(t, p, offset + 1) for (t, p), offset in last.items()]
        try:
            self.consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            # A partition was revoked meanwhile; its new owner re-reads and skips these records.
            log.info("kafka_offsets_not_stored", error=str(exc))

    def rewind(self, records: Sequence[Record]) -> None:
        """Seek back so that the next consume() returns this failed batch again."""
        first: dict[tuple[str, int], int] = {}
        for record in records:
            position = (record.topic, record.partition)
            first[position] = min(first.get(position, record.offset), record.offset)
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # revoked: the new owner starts from the committed one
                log.info("kafka_seek_skipped", topic=topic, partition=partition, error=str(exc))


def _dead_letter(record: Record, why: Rejected) -> Outgoing:
    reason = DeadLetterReason(
        error=why.error,
        detail=why.detail[:MAX_DETAIL_CHARS],
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        dead_lettered_at=utcnow(),
    )
    log.warning(
        "kafka_request_dead_lettered",
        error=why.error,
        detail=reason.detail,
        topic=reason.topic,
        partition=reason.partition,
        offset=reason.offset,
    )
    headers: Headers = [*record.headers, (DLQ_REASON_HEADER, reason.model_dump_json().encode())]
    return Outgoing(key=record.key, value=record.value, headers=headers)


# --- the loop ------------------------------------------------------------------------------------


class Backoff:
    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.first


def consume_until(ingest: Ingest, stop: threading.Event) -> None:
    """Handle batches until ``stop`` is set; the batch in hand is finished first."""
    settings, backoff = ingest.settings, Backoff()
    next_results = 0.0
    while not stop.is_set():
        messages = ingest.consumer.consume(
            settings.kafka_batch_size, settings.kafka_poll_timeout_seconds
        )
        records = ingest.records(messages)
        ingest.lag.refresh()
        if records:
            try:
                ingest.handle(records)
                backoff.reset()
            except Exception as exc:  # database or broker outage: retry the batch, never exit
                delay = backoff.next()
                log.error("kafka_batch_failed", records=len(records), retry=delay, error=repr(exc))
                ingest.rewind(records)
                stop.wait(delay)
                continue
        ingest.paused.resume_when_room()
        if time.monotonic() >= next_results:
            full = _publish_results(ingest, settings) >= RESULTS_PER_ROUND
            next_results = 0.0 if full else time.monotonic() + RESULTS_INTERVAL_SECONDS


def _is_record(message: Message) -> bool:
    error = message.error()
    if error is None:
        return True
    if error.fatal():
        raise KafkaException(error)
    log.warning("kafka_consumer_error", error=str(error))
    return False


def _publish_results(ingest: Ingest, settings: Settings) -> int:
    topic = settings.kafka_results_topic
    try:
        sent = publish_results(ingest.database, ingest.producer, topic, RESULTS_PER_ROUND)
    except Exception as exc:  # DeliveryFailed or the database: rows stay unsent, next round retries
        log.warning("kafka_results_not_published", error=repr(exc))
        return 0
    if sent:
        log.info("kafka_results_published", records=sent)
    return sent


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("ingest_stopping", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_ingest(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT: finish the batch in hand, commit its offsets, leave the group."""
    _serve_metrics(settings.metrics_port)
    database = Database(settings.resolved_database_url)
    consumer = Consumer(consumer_config(settings))
    producer = Producer(producer_config(settings))
    ingest = Ingest(settings, database, consumer, producer)
    with _stop_on_signals() as stop:
        try:
            consumer.subscribe(
                [settings.kafka_requests_topic],
                on_assign=lambda _c, parts: _log_partitions("kafka_partitions_assigned", parts),
                on_revoke=lambda c, parts: _revoked(ingest, c, parts),
            )
            log.info(
                "ingest_started",
                topic=settings.kafka_requests_topic,
                group=settings.kafka_group_id,
            )
            consume_until(ingest, stop)
        finally:
            consumer.close()  # commits the stored offsets and leaves the group
            producer.flush(30)
            database.dispose()
            log.info("ingest_stopped")


def _revoked(ingest: Ingest, consumer: Consumer, partitions: list[TopicPartition]) -> None:
    _log_partitions("kafka_partitions_revoked", partitions)
    ingest.paused.forget(consumer, partitions)  # also called for lost partitions (no on_lost)
    ingest.lag.forget(partitions)


def _serve_metrics(port: int) -> None:
    """This process's metrics (the default registry: one process) on ``port``. A port already
    taken is logged and ingest goes on without it, as a worker does (Celery logs a failing
    ``worker_init`` hook and starts): consuming matters more than being watched, and the
    scrape that fails says it."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port)
    except OSError as exc:
        log.error("metrics_not_served", port=port, error=str(exc))
        return
    log.info("metrics_served", port=port)


def _log_partitions(event: str, partitions: list[TopicPartition]) -> None:
    log.info(event, partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
