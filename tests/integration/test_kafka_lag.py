"""`inferq ingest` serves inferq_kafka_consumer_lag{topic,partition} on INFERQ_METRICS_PORT: per
partition it owns, the records it has not read yet. A tansu broker (Kafka protocol), PostgreSQL,
Redis, and `inferq ingest` and `inferq worker` as separate processes.

The backlog is held still by the kafka tenant's quota of pending inputs: with no worker running,
ingest takes QUOTA requests and pauses every partition at its first refused record, so the lag
it reports can be checked exactly, partition by partition, before a worker drains the work and
the lag falls to 0."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from core.db.models import Job, KafkaRecord
from core.db.session import Database
from tests.conftest import stack_env
from tests.kafka import FAST_GROUP, PARTITIONS, Broker, running_tansu
from tests.services import Stack, free_port, fresh_postgres_database, fresh_redis_db, wait_for

pytestmark = pytest.mark.integration

QUOTA = 4  # pending inputs of the kafka tenant; each request is one input
SENT = 15
REDIS_DB = 1  # this module's own
LAG = "inferq_kafka_consumer_lag"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with running_tansu(tmp_path_factory.mktemp("tansu") / "tansu.log") as running:
        yield running


@dataclass
class Door:
    """One ingest deployment on a topic of its own, with no worker yet: nothing finishes."""

    broker: Broker
    stack: Stack
    database: Database
    topic: str

    def start(self, name: str, *args: str) -> int:
        """Start ``inferq <args>`` with a metrics port of its own; returns the port."""
        port = free_port()
        self.stack.env = {**self.stack.env, "INFERQ_METRICS_PORT": str(port)}
        self.stack.start(name, *args)
        return port

    def start_ingest(self, name: str = "ingest") -> int:
        port = self.start(name, "ingest")
        wait_for(
            lambda: "kafka_partitions_assigned" in self.stack.log(name),
            60,
            f"{name} to join",
            self.stack,
            name,
        )
        return port

    def accepted(self) -> dict[int, int]:
        """How many records of each partition became jobs."""
        with self.database.read() as session:
            rows = session.execute(
                select(KafkaRecord.partition, func.count())
                .where(KafkaRecord.topic == self.topic)
                .group_by(KafkaRecord.partition)
            ).tuples()
            return {partition: count for partition, count in rows}

    def jobs(self) -> int:
        with self.database.read() as session:
            return int(session.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.fixture
def door(broker: Broker, tmp_path: Path) -> Iterator[Door]:
    run = uuid.uuid4().hex[:8]
    topic = f"lag-{run}.requests"
    broker.create_topics(topic, f"lag-{run}.results", f"lag-{run}.dlq")
    env = {
        "INFERQ_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "INFERQ_KAFKA_REQUESTS_TOPIC": topic,
        "INFERQ_KAFKA_RESULTS_TOPIC": f"lag-{run}.results",
        "INFERQ_KAFKA_DLQ_TOPIC": f"lag-{run}.dlq",
        "INFERQ_KAFKA_GROUP_ID": f"inferq-ingest-lag-{run}",
        "INFERQ_KAFKA_CONSUMER_OPTIONS": json.dumps({**FAST_GROUP, "auto.commit.interval.ms": 200}),
        "INFERQ_KAFKA_POLL_TIMEOUT_SECONDS": "0.2",
        "INFERQ_MAX_PENDING_INPUTS_PER_TENANT": str(QUOTA),
    }
    with fresh_postgres_database() as pg_url, fresh_redis_db(REDIS_DB) as redis_url:
        stack = Stack(stack_env(pg_url, redis_url, tmp_path, **env), tmp_path)
        database = Database(pg_url)
        try:
            stack.run("db", "upgrade")
            yield Door(broker, stack, database, topic)
        finally:
            stack.stop_all()
            database.dispose()


def _requests(count: int) -> list[dict[str, Any]]:
    # Distinct texts: none is answered from the result cache, so every job stays pending.
    return [
        {"id": f"req-{uuid.uuid4()}", "task": "sentiment", "text": f"a fine film , take {n} ."}
        for n in range(count)
    ]


def lag(port: int, topic: str) -> dict[int, float] | None:
    """The lag series ingest serves for ``topic``, by partition; None while it cannot be read."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    return {
        int(sample.labels["partition"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == LAG
        for sample in family.samples
        if sample.labels["topic"] == topic
    }


def test_the_lag_of_each_partition_is_what_is_left_to_read_and_falls_to_zero(
    door: Door,
) -> None:
    door.broker.produce_json(door.topic, _requests(SENT))  # while no ingest runs
    produced = door.broker.end_offsets(door.topic)  # tansu numbers a fresh topic from 0

    port = door.start_ingest()
    wait_for(
        lambda: '"kafka_paused_for_quota"' in door.stack.log("ingest") and door.jobs() == QUOTA,
        60,
        "ingest to pause at the quota",
        door.stack,
        "ingest",
    )
    accepted = door.accepted()
    left = {p: float(produced.get(p, 0) - accepted.get(p, 0)) for p in range(PARTITIONS)}
    assert sum(left.values()) == SENT - QUOTA
    wait_for(lambda: lag(port, door.topic) == left, 60, f"lag {left}", door.stack, "ingest")

    door.start("worker", "worker", "--pool", "prefork", "--concurrency", "1")  # work drains
    wait_for(
        lambda: door.jobs() == SENT, 240, "every request to become a job", door.stack, "worker"
    )
    nothing_left = dict.fromkeys(range(PARTITIONS), 0.0)
    wait_for(lambda: lag(port, door.topic) == nothing_left, 60, "no lag", door.stack, "ingest")


def test_a_revoked_partition_s_series_goes_with_it(door: Door) -> None:
    door.broker.produce_json(door.topic, _requests(SENT))
    first = door.start_ingest("first")
    every = set(range(PARTITIONS))
    wait_for(lambda: set(lag(first, door.topic) or {}) == every, 60, "lag of every partition")

    second = door.start_ingest("second")  # the group rebalances: the partitions are shared
    wait_for(
        lambda: '"kafka_partitions_revoked"' in door.stack.log("first"),
        60,
        "the first member to give partitions up",
        door.stack,
        "first",
    )

    def shared() -> bool:
        mine, theirs = set(lag(first, door.topic) or {}), set(lag(second, door.topic) or {})
        return bool(mine) and bool(theirs) and not mine & theirs and mine | theirs == every

    wait_for(shared, 60, "each partition reported by its owner only", door.stack, "second")
