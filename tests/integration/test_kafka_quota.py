"""Backpressure at the Kafka door against real services: when the kafka tenant's pending inputs
reach its quota, `inferq ingest` pauses its partitions instead of dead-lettering valid requests,
and resumes them where it stopped once the work drains. A tansu broker (Kafka protocol),
PostgreSQL, Redis, and `inferq ingest` and `inferq worker` as separate processes."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from core.db.models import Job, KafkaRecord
from core.db.session import Database
from core.jobs.state import JobStatus
from tests.conftest import stack_env
from tests.kafka import FAST_GROUP, Broker, running_tansu
from tests.services import Stack, fresh_postgres_database, fresh_redis_db, wait_for

pytestmark = pytest.mark.integration

QUOTA = 5  # pending inputs of the kafka tenant; each request is one input
SENT = 12
REDIS_DB = 8  # this module's own: a flush by another module must not drop its queued work


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with running_tansu(tmp_path_factory.mktemp("tansu") / "tansu.log") as running:
        yield running


@dataclass
class Door:
    """One ingest deployment on topics of its own, with no worker yet: nothing finishes."""

    broker: Broker
    stack: Stack
    database: Database
    topic: str
    dlq: str
    group: str

    def start_ingest(self, name: str = "ingest") -> None:
        self.stack.start(name, "ingest")
        wait_for(
            lambda: "kafka_partitions_assigned" in self.stack.log(name),
            30,
            f"{name} to join",
            self.stack,
            name,
        )

    def jobs_per_id(self, ids: list[str]) -> dict[str, int]:
        keys = [f"kafka:{message_id}" for message_id in ids]
        with self.database.read() as session:
            rows = session.execute(
                select(Job.idempotency_key, func.count())
                .where(Job.idempotency_key.in_(keys))
                .group_by(Job.idempotency_key)
            ).tuples()
            return {str(key).removeprefix("kafka:"): count for key, count in rows}

    def accepted_offsets(self) -> dict[int, list[int]]:
        """The offsets that became jobs, per partition."""
        with self.database.read() as session:
            rows = session.execute(
                select(KafkaRecord.partition, KafkaRecord.offset).where(
                    KafkaRecord.topic == self.topic
                )
            ).tuples()
            accepted: dict[int, list[int]] = {}
            for partition, offset in rows:
                accepted.setdefault(partition, []).append(offset)
        return {partition: sorted(offsets) for partition, offsets in accepted.items()}

    def dead_letters(self, seconds: float = 3) -> int:
        """How many records the DLQ topic holds (read from the start for ``seconds``)."""
        until = time.monotonic() + seconds
        return len(self.broker.read(self.dlq, lambda _: time.monotonic() > until))

    def events(self, name: str, event: str) -> list[dict[str, Any]]:
        lines = self.stack.log(name).splitlines()
        return [json.loads(line) for line in lines if f'"{event}"' in line]


@pytest.fixture
def door(broker: Broker, tmp_path: Path) -> Iterator[Door]:
    run = uuid.uuid4().hex[:8]
    topic, results, dlq = f"quota-{run}.requests", f"quota-{run}.results", f"quota-{run}.dlq"
    group = f"inferq-ingest-quota-{run}"
    broker.create_topics(topic, results, dlq)
    consumer_options = {**FAST_GROUP, "auto.commit.interval.ms": 200}
    env = {
        "INFERQ_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "INFERQ_KAFKA_REQUESTS_TOPIC": topic,
        "INFERQ_KAFKA_RESULTS_TOPIC": results,
        "INFERQ_KAFKA_DLQ_TOPIC": dlq,
        "INFERQ_KAFKA_GROUP_ID": group,
        "INFERQ_KAFKA_CONSUMER_OPTIONS": json.dumps(consumer_options),
        "INFERQ_KAFKA_POLL_TIMEOUT_SECONDS": "0.2",
        "INFERQ_MAX_PENDING_INPUTS_PER_TENANT": str(QUOTA),
    }
    with fresh_postgres_database() as pg_url, fresh_redis_db(REDIS_DB) as redis_url:
        stack = Stack(stack_env(pg_url, redis_url, tmp_path, **env), tmp_path)
        database = Database(pg_url)
        try:
            stack.run("db", "upgrade")
            yield Door(broker, stack, database, topic, dlq, group)
        finally:
            stack.stop_all()
            database.dispose()


def _requests(count: int) -> list[dict[str, Any]]:
    # Distinct texts: none is answered from the result cache, so every job stays pending.
    return [
        {"id": f"req-{uuid.uuid4()}", "task": "sentiment", "text": f"a fine film , part {n} ."}
        for n in range(count)
    ]


def _wait_until_paused(door: Door, ids: list[str], name: str = "ingest") -> None:
    wait_for(
        lambda: door.events(name, "kafka_paused_for_quota") and len(door.jobs_per_id(ids)) == QUOTA,
        30,
        "ingest to pause at the quota",
        door.stack,
        name,
    )


def _finish_pending_jobs(database: Database) -> None:
    """Stand-in for a worker where the test is about the consumer, not the work: the jobs in
    flight end, so the tenant's pending inputs drop to zero."""
    with database.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            .values(status=JobStatus.SUCCEEDED)
        )


def test_at_the_quota_ingest_pauses_instead_of_dead_lettering_and_resumes_when_work_drains(
    door: Door,
) -> None:
    requests = _requests(SENT)
    ids = [r["id"] for r in requests]
    door.start_ingest()

    door.broker.produce_json(door.topic, requests)
    _wait_until_paused(door, ids)
    accepted = door.accepted_offsets()
    # In each partition the accepted records are the first ones, and the committed offset
    # stops at the first record the quota refused (tansu numbers a fresh topic from 0).
    assert all(offsets == list(range(len(offsets))) for offsets in accepted.values())
    stops = {partition: len(offsets) for partition, offsets in accepted.items()}
    wait_for(lambda: door.broker.committed(door.group, door.topic) == stops, 15, "the commit")
    time.sleep(2)  # paused: a second look at the pending inputs admits nothing more
    assert len(door.jobs_per_id(ids)) == QUOTA
    assert door.broker.committed(door.group, door.topic) == stops
    (paused, *_) = door.events("ingest", "kafka_paused_for_quota")
    assert (paused["pending"], paused["limit"]) == (QUOTA, QUOTA)

    door.stack.start_worker()  # the work drains, the ingest resumes where it stopped
    wait_for(
        lambda: door.jobs_per_id(ids) == dict.fromkeys(ids, 1),
        240,  # generous: on a busy 2-core machine a pause/resume cycle waits on the worker
        "every request to become a job",
        door.stack,
        "ingest",
    )
    wait_for(
        lambda: (
            door.broker.committed(door.group, door.topic) == door.broker.end_offsets(door.topic)
        ),
        15,
        "every offset to be committed",
    )

    assert door.events("ingest", "kafka_resumed")
    assert not door.events("ingest", "kafka_request_dead_lettered")
    assert door.dead_letters() == 0
    assert door.jobs_per_id(ids) == dict.fromkeys(ids, 1)
    assert door.stack.processes["ingest"].poll() is None, "ingest stopped"


def test_a_partition_revoked_while_paused_is_read_again_by_its_next_owner(door: Door) -> None:
    # librdkafka keeps a partition paused across a revoke and a new assignment: unless ingest
    # resumes what it forgets on revoke, the partitions it gets back stay paused for good.
    requests = _requests(SENT)
    ids = [r["id"] for r in requests]
    door.start_ingest("first")
    door.broker.produce_json(door.topic, requests)
    _wait_until_paused(door, ids, "first")

    door.start_ingest("second")  # a rebalance: the paused partitions are revoked and shared
    wait_for(
        lambda: "kafka_paused_partitions_revoked" in door.stack.log("first"),
        30,
        "the rebalance",
        door.stack,
        "first",
    )
    second = door.stack.processes["second"]
    door.stack.kill("second", signal.SIGTERM)  # and back: the first one owns them all again
    assert second.returncode == 0, door.stack.log("second")[-2000:]
    _finish_pending_jobs(door.database)  # no worker needed to free the quota
    wait_for(
        lambda: len(door.jobs_per_id(ids)) >= 2 * QUOTA,
        180,
        "the first ingest to take in work again",
        door.stack,
        "first",
    )
    _finish_pending_jobs(door.database)
    wait_for(
        lambda: door.jobs_per_id(ids) == dict.fromkeys(ids, 1),
        180,
        "every request to become a job, once",
        door.stack,
        "first",
    )

    assert not door.events("first", "kafka_request_dead_lettered")
    assert not door.events("second", "kafka_request_dead_lettered")
    assert door.dead_letters() == 0
