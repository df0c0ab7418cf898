"""The Kafka door's backpressure: the ``kafka`` tenant's quota of pending inputs.

A record the quota refuses is valid work that came too early, so it is never dead-lettered:
its partition stops at it (records after it stay unhandled, so per-partition order is kept),
the consumer pauses the partition and seeks it back to that record, and no offset at or past
it is stored. The loop keeps polling while paused (the consumer stays in the group, results
keep being published) and, at most every ``CHECK_INTERVAL_SECONDS``, reads the tenant's
pending inputs; once there is room it resumes every paused partition at its refused record.

What librdkafka does (2.16, checked against tansu; see librdkafka#3471, #2557 and
confluent-kafka-go#193): a pause drops what was fetched ahead; ``resume()`` restarts at the
last record given to the application + 1 unless a seek says otherwise, so a partition is
sought to its refused record after ``pause()`` and again after ``resume()``; and a partition
paused when it is revoked stays paused when it is assigned again, so it is resumed while it
is still ours, in the revoke callback, and forgotten: its next owner re-reads it from the
committed offset, which never passes a refused record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.config import Settings
from core.db.session import Database
from core.security.quotas import pending_inputs
from core.security.tenants import ensure_tenant
from core.telemetry.metrics import KAFKA_PAUSED_PARTITIONS

log = structlog.get_logger(__name__)

KAFKA_TENANT = "kafka"
CHECK_INTERVAL_SECONDS = 1.0  # how often a paused consumer reads the tenant's pending inputs
# Resume only once pending inputs are back to 90 % of the quota, not merely under it. Resuming
# at the first free slot would admit a record or two, hit the quota, pause, and re-fetch the
# partition from the refused record again, once a second, for as long as the backlog lasts:
# each round a fetch, a transaction whose refusals all roll back, and two log lines. A 10 %
# margin lets each resume admit a real batch; it stays small so that the workers, which drain
# the backlog meanwhile, do not run dry before new work arrives.
RESUME_PERCENT = 90

Partition = tuple[str, int]  # (topic, partition)


def kafka_limit(own: int | None, settings: Settings) -> int | None:
    """The kafka tenant's quota: its own row's, else the setting's (None: no quota)."""
    return own if own is not None else settings.max_pending_inputs_per_tenant


def kafka_tenant(session: Session, settings: Settings) -> tuple[int, int | None]:
    """The kafka tenant's id and quota of pending inputs, read (or the tenant made) now."""
    tenant = ensure_tenant(session, KAFKA_TENANT)
    return tenant.id, kafka_limit(tenant.max_pending_inputs, settings)


def room_to_resume(pending: int, limit: int | None) -> bool:
    """Whether paused partitions may resume: no quota any more, or pending inputs back to
    ``RESUME_PERCENT`` of it (in integers, so a quota of 1 resumes only when nothing is
    pending and a quota of 5 when at most 4 are)."""
    return limit is None or pending * 100 <= limit * RESUME_PERCENT


class QuotaPause:
    """The partitions this consumer paused for the quota, each at its refused record."""

    def __init__(
        self,
        consumer: Consumer,
        database: Database,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.database = database
        self.settings = settings
        self.clock = clock
        self._at: dict[Partition, int] = {}  # partition -> the offset of its refused record
        self._next_check = 0.0

    def holds(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self._at

    def pause(self, refused: dict[Partition, int], pending: int, limit: int | None) -> None:
        """Pause these partitions, each sought back to its refused record's offset."""
        partitions = [TopicPartition(t, p, offset) for (t, p), offset in refused.items()]
        try:
            self.consumer.pause(partitions)
        except KafkaException as exc:  # revoked meanwhile: the new owner re-reads from the commit
            log.info("kafka_pause_skipped", error=str(exc))
            return
        _seek(self.consumer, partitions)
        self._at.update(refused)
        self._next_check = self.clock() + CHECK_INTERVAL_SECONDS
        KAFKA_PAUSED_PARTITIONS.set(len(self._at))
        log.warning(
            "kafka_paused_for_quota",
            partitions=_names(partitions),
            pending=pending,
            limit=limit,
            paused=len(self._at),
        )

    def resume_when_room(self) -> None:
        """Resume every paused partition once the tenant's pending inputs leave room again;
        reads them at most every ``CHECK_INTERVAL_SECONDS``."""
        if not self._at or self.clock() < self._next_check:
            return
        self._next_check = self.clock() + CHECK_INTERVAL_SECONDS
        try:
            with self.database.read() as session:
                tenant_id, limit = kafka_tenant(session, self.settings)
                pending = pending_inputs(session, [tenant_id])[tenant_id]
        except SQLAlchemyError as exc:  # stay paused; the next check tries again
            log.warning("kafka_quota_check_failed", error=repr(exc))
            return
        if room_to_resume(pending, limit):
            self._resume(pending, limit)

    def _resume(self, pending: int, limit: int | None) -> None:
        partitions = [TopicPartition(t, p, offset) for (t, p), offset in self._at.items()]
        self._at.clear()
        KAFKA_PAUSED_PARTITIONS.set(0)
        self.consumer.resume(partitions)
        _seek(self.consumer, partitions)
        log.info("kafka_resumed", partitions=_names(partitions), pending=pending, limit=limit)

    def forget(self, consumer: Consumer, revoked: Iterable[TopicPartition]) -> None:
        """On revoke (or loss): resume and forget the paused ones among ``revoked``."""
        gone = [tp for tp in revoked if self._at.pop((tp.topic, tp.partition), None) is not None]
        if not gone:
            return
        KAFKA_PAUSED_PARTITIONS.set(len(self._at))
        try:
            consumer.resume(gone)
        except KafkaException as exc:  # already unassigned: nothing is left paused to clear
            log.info("kafka_resume_skipped", error=str(exc))
        log.info("kafka_paused_partitions_revoked", partitions=_names(gone), paused=len(self._at))


def _seek(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    for partition in partitions:
        try:
            consumer.seek(partition)
        except KafkaException as exc:  # revoked: the new owner starts from the committed offset
            log.info("kafka_seek_skipped", partition=_names([partition]), error=str(exc))


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions]
