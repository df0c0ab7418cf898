"""Kafka producing: the idempotent producer, confirmed sends, and the results relay.

The results relay sends the ``kafka_result`` outbox rows that ``settle_job`` wrote when a
Kafka-originated job finished. Rows are marked sent in the transaction that read them, and
only after every record of the round was acknowledged by the broker; if that transaction then
fails to commit, the records go out again next round. So delivery is at least once, and
consumers of ``inferq.results`` dedupe on the key (the request's id).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, Producer
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from core.config import Settings
from core.db.models import Job, JobItem, OutboxMessage
from core.db.session import Database
from core.jobs import outbox
from core.jobs.presenters import result_out
from schemas.kafka import RESULT_SCHEMA, SCHEMA_HEADER, KafkaResult

log = structlog.get_logger(__name__)

FLUSH_TIMEOUT_SECONDS = 30.0
Headers = list[tuple[str, str | bytes | None]]


class DeliveryFailed(Exception):
    """The broker did not acknowledge every record of a send; nothing may be marked done."""


@dataclass(frozen=True)
class Outgoing:
    key: bytes | None
    value: bytes | None
    headers: Headers


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        "linger.ms": 5,
        **settings.kafka_options,
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        # No duplicates or reordering from the producer's own retries; implies acks=all.
        "enable.idempotence": True,
        "acks": "all",
    }


def send_confirmed(producer: Producer, topic: str, records: Sequence[Outgoing]) -> None:
    """Produce ``records`` and return only once the broker has acknowledged all of them."""
    if not records:
        return
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(error)

    for record in records:
        producer.produce(
            topic, value=record.value, key=record.key, headers=record.headers, on_delivery=delivered
        )
        producer.poll(0)
    unsent = producer.flush(FLUSH_TIMEOUT_SECONDS)
    if unsent or failures:
        reasons = sorted({str(error) for error in failures}) or ["flush timed out"]
        raise DeliveryFailed(
            f"{len(failures) + unsent} of {len(records)} records to {topic} were not "
            f"acknowledged: {'; '.join(reasons)}"
        )


def publish_results(database: Database, producer: Producer, topic: str, limit: int = 500) -> int:
    """Publish pending result records; returns how many outbox rows were relayed."""
    with database.transaction() as session:
        outgoing: list[Outgoing] = []

        def collect(messages: Sequence[OutboxMessage]) -> None:
            for message in messages:
                record = result_record(session, message.payload)
                if record is not None:
                    outgoing.append(record)

        relayed = outbox.relay(session, collect, kinds=(outbox.KAFKA_RESULT_KIND,), limit=limit)
        send_confirmed(producer, topic, outgoing)  # raises: the rows stay unsent
    return relayed


def result_record(session: Session, payload: dict[str, Any]) -> Outgoing | None:
    job = session.scalar(
        select(Job)
        .where(Job.id == uuid.UUID(payload["job_id"]))
        .options(selectinload(Job.items).selectinload(JobItem.result))
    )
    if job is None:  # deleted since it finished: there is nothing left to report
        log.warning("kafka_result_job_gone", **payload)
        return None
    record = _kafka_result(payload["message_id"], job)
    absent = {"result"} if record.result is None else {"error"}
    return Outgoing(
        key=record.id.encode(),
        value=record.model_dump_json(exclude=absent).encode(),
        headers=[(SCHEMA_HEADER, RESULT_SCHEMA.encode())],
    )


def _kafka_result(message_id: str, job: Job) -> KafkaResult:
    # A Kafka request is one text, so its job has exactly one item.
    item = job.items[0]
    result = result_out(item.index, item.result) if item.result is not None else None
    error = None if result is not None else (item.error or job.error or f"input is {item.status}")
    return KafkaResult(
        id=message_id,
        job_id=job.id,
        task=job.task,
        status=job.status,
        result=result,
        error=error,
        metadata=job.metadata_,
        finished_at=job.finished_at,
    )
