"""``inferq_kafka_consumer_lag{topic,partition}``: the records of each partition this consumer
owns that it has not read yet, refreshed from the consume loop at most every
``REFRESH_SECONDS``, and gone with the partition when it is revoked.

Lag = the partition's high watermark - the consumer's position (the offset after the last record
handed to the application). Both come from the client, not the broker: the high watermark is
the one the last fetch response carried (``get_watermark_offsets(cached=True)``), so a refresh
costs no round trip and a broker that is down cannot stall the loop. Chosen over the statistics
callback (``statistics.interval.ms``), which serialises every broker's and partition's counters
to JSON for the loop to parse, and whose ``consumer_lag`` is measured from the committed offset,
which trails the position by the commit interval here.

A partition has no position until a record of it is consumed, nor after a seek (a batch rewound
after a failure, a partition paused at its quota): its lag is then measured from the committed
offset, asked of the group coordinator (one request for all such partitions, with a short
timeout); with no committed offset either, from the low watermark when the consumer starts a
new group from the beginning, as ``inferq ingest`` does. A partition no fetch has answered yet
has no series. A paused partition is not fetched, so its high watermark stays at the last fetch
before the pause: while paused, its lag leaves out the records produced since.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import suppress

import structlog
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, TopicPartition

from core.telemetry.metrics import KAFKA_CONSUMER_LAG

log = structlog.get_logger(__name__)

REFRESH_SECONDS = 5.0
COMMITTED_TIMEOUT_SECONDS = 1.0  # the loop waits at most this for the committed offsets
FROM_BEGINNING = frozenset({"earliest", "smallest", "beginning"})  # auto.offset.reset values


class ConsumerLag:
    def __init__(
        self,
        consumer: Consumer,
        *,
        from_beginning: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.from_beginning = from_beginning
        self.clock = clock
        self._next = 0.0

    def refresh(self) -> None:
        """Set the gauge of every assigned partition, unless it was set under
        ``REFRESH_SECONDS`` ago."""
        if self.clock() < self._next:
            return
        self._next = self.clock() + REFRESH_SECONDS
        try:
            lags = self._lags()
        except KafkaException as exc:  # closed or fenced mid-rebalance: the next refresh retries
            log.warning("kafka_lag_not_read", error=str(exc))
            return
        for (topic, partition), lag in lags.items():
            KAFKA_CONSUMER_LAG.labels(topic, str(partition)).set(lag)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop the series of revoked (or lost) partitions: their new owner reports them."""
        for tp in partitions:
            with suppress(KeyError):  # never reported: no fetch had answered for it
                KAFKA_CONSUMER_LAG.remove(tp.topic, str(tp.partition))

    def _lags(self) -> dict[tuple[str, int], int]:
        assigned = self.consumer.assignment()
        if not assigned:
            return {}
        positions = self.consumer.position(assigned)
        starts = {(tp.topic, tp.partition): tp.offset for tp in positions if tp.offset >= 0}
        unread = [tp for tp in positions if (tp.topic, tp.partition) not in starts]
        committed = self._committed(unread)
        if committed is None:  # not known now: those partitions keep their last value
            assigned = [tp for tp in assigned if (tp.topic, tp.partition) in starts]
            committed = {}
        starts = {**committed, **starts}
        lags: dict[tuple[str, int], int] = {}
        for tp in assigned:
            low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            start = starts.get((tp.topic, tp.partition), OFFSET_INVALID)
            if start < 0 and self.from_beginning:
                start = low
            if high >= 0 and start >= 0:
                lags[(tp.topic, tp.partition)] = max(high - start, 0)
        return lags

    def _committed(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int] | None:
        """The committed offsets of these partitions (absent: none committed), or None when
        the coordinator did not answer in time."""
        if not partitions:
            return {}
        bare = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        try:
            committed = self.consumer.committed(bare, timeout=COMMITTED_TIMEOUT_SECONDS)
        except KafkaException as exc:
            log.info("kafka_committed_not_read", error=str(exc))
            return None
        return {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}
