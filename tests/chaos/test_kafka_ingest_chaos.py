"""Scenario 5, the Kafka door. The client is an at-least-once producer and a consumer that reads
the results and dead-letter topics as they come. Valid requests are mixed with invalid records,
so the dead-letter path runs too. What must hold: every valid request id gets a result record,
every invalid record is dead-lettered, no request id gets two jobs.

1. ``inferq ingest`` is SIGKILLed at random moments while it consumes the stream, and a new one
   is started each time (CI: 5 kills during 5,000 requests; ``make chaos``: 16 during 20,000).
2. The broker is restarted between two halves of a stream. tansu as shipped here stores in
   memory only (see ``RestartableTansu``), so its restart is the harsher fault of a broker that
   lost its log: topics, records, committed offsets, and offsets start again at 0. The restart
   comes once everything sent before it is answered, so only the reuse of offsets is tested:
   a record is a redelivery only when its position *and* its message id were seen before.
   A real Kafka broker keeps its log across a restart; tansu here cannot, so this is the
   harder fault.

The worker runs the light TF-IDF tier (``INFERQ_CIRCUIT_FORCE_OPEN=sentiment:primary``: results
are marked ``degraded``) so that the run measures the door, not the transformer."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka import Consumer as KafkaConsumer

from tests.chaos.infra import RestartableTansu, query, running_restartable_tansu, sst2_texts
from tests.chaos.scale import record_figures, scaled
from tests.kafka import FAST_GROUP
from tests.services import Stack, wait_for

pytestmark = pytest.mark.chaos

REQUESTS, RESULTS, DLQ = "inferq.requests", "inferq.results", "inferq.requests.dlq"
KILLS = scaled(ci=5, full=16)
QUIET_SECONDS = 15  # nothing new answered for this long after the stream: what is missing is lost


class BrokerLogLoss(AssertionError):
    """Requests lost after the broker lost its log (see the module docstring)."""


@dataclass
class Client:
    """Reads the results and dead-letter topics from the beginning, again after each broker
    restart (a new epoch), and remembers every answer it has seen."""

    bootstrap: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead: set[bytes] = field(default_factory=set)
    epoch: int = 0
    last_answer: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        while not self.stop.is_set():
            epoch, consumer = self.epoch, self._consumer()
            try:
                while epoch == self.epoch and not self.stop.is_set():
                    for message in consumer.consume(500, 0.5):
                        if message.error() is None:
                            self._keep(message.topic(), message.key(), message.value())
            finally:
                consumer.close()

    def _consumer(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"client-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in (RESULTS, DLQ) for p in range(3)]
        )
        return consumer

    def _keep(self, topic: str | None, key: bytes | None, value: bytes | None) -> None:
        with self.lock:
            if topic == RESULTS:
                answer_id = (key or b"").decode()
                new = answer_id not in self.results
                self.results[answer_id] = json.loads(value or b"{}")
            else:
                new = value not in self.dead
                self.dead.add(value or b"")
            if new:
                self.last_answer = time.monotonic()


def _requests(texts: list[str], run: str) -> dict[str, bytes]:
    return {
        f"req-{run}-{i}": json.dumps(
            {"id": f"req-{run}-{i}", "task": "sentiment", "text": text}
        ).encode()
        for i, text in enumerate(texts)
    }


def _invalid(n: int, run: str) -> list[bytes]:
    kinds = [
        lambda i: f"not json {run} {i} {{".encode(),
        lambda i: json.dumps({"id": f"bad-{run}-{i}", "task": "sentiment"}).encode(),
        lambda i: json.dumps(
            {"id": f"bad-{run}-{i}", "task": "no-such-task", "text": "x"}
        ).encode(),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


@dataclass
class Run:
    stack: Stack
    tansu: RestartableTansu
    rng: random.Random
    kills: int = 0
    ingests: int = 0

    def start_ingest(self) -> None:
        self.ingests += 1
        name = f"ingest-{self.ingests}"
        self.stack.start(name, "ingest")
        wait_for(
            lambda: "kafka_partitions_assigned" in self.stack.log(name),
            60,
            f"{name} to join the group",
            self.stack,
            name,
        )

    def kill_ingest_soon(self) -> None:
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.stack.kill(f"ingest-{self.ingests}")
        self.kills += 1
        self.start_ingest()

    def produce(self, values: list[bytes]) -> None:
        self.tansu.broker.produce(REQUESTS, values)


def _jobs_per_request(dsn: str) -> Counter[str]:
    rows = query(dsn, "SELECT idempotency_key, count(*) FROM jobs GROUP BY idempotency_key")
    return Counter({str(key).removeprefix("kafka:"): int(str(n)) for key, n in rows})


@contextmanager
def _deployed(services: Any, chaos_stack: Any, tmp_path: Path) -> Iterator[tuple[Run, Client]]:
    """A broker, beat, a light-tier worker, an ingest and a reading client."""
    with running_restartable_tansu(tmp_path / "tansu.log") as tansu:
        tansu.broker.create_topics(REQUESTS, RESULTS, DLQ)
        stack: Stack
        stack, _ = chaos_stack(
            INFERQ_KAFKA_BOOTSTRAP_SERVERS=tansu.broker.bootstrap,
            INFERQ_KAFKA_CONSUMER_OPTIONS=json.dumps(
                {**FAST_GROUP, "auto.commit.interval.ms": 200}
            ),
            INFERQ_KAFKA_POLL_TIMEOUT_SECONDS="0.2",
            INFERQ_CIRCUIT_FORCE_OPEN="sentiment:primary",
            INFERQ_SWEEP_INTERVAL_SECONDS="2",
            INFERQ_REDISPATCH_AFTER_SECONDS="10",
        )
        stack.start("beat", "beat")
        stack.start_worker(concurrency=2)
        chaos = Run(stack, tansu, random.Random(20261202))
        chaos.start_ingest()
        client = Client(tansu.broker.bootstrap)
        reader = threading.Thread(target=client.run, daemon=True)
        reader.start()
        try:
            yield chaos, client
        finally:
            client.stop.set()
            reader.join(timeout=30)


def _traffic(valid: int, invalid: int, seed: int) -> tuple[dict[str, bytes], list[bytes]]:
    """Valid requests by id, and every value to send (valid and invalid) in a random order."""
    run_id = uuid.uuid4().hex[:8]
    requests = _requests(sst2_texts(valid, seed=seed), run_id)
    values = [*requests.values(), *_invalid(invalid, run_id)]
    random.Random(seed).shuffle(values)
    return requests, values


def _check(
    figures: dict[str, Any], chaos: Run, client: Client, dsn: str, requests: dict[str, bytes],
    values: list[bytes],
) -> set[str]:  # fmt: skip
    """Record the figures, assert what must hold whatever the broker lost, return the ids of
    the requests that never got a result."""
    invalid = set(values) - set(requests.values())
    jobs = _jobs_per_request(dsn)
    missing = set(requests) - set(client.results)
    logs = [chaos.stack.log(f"ingest-{i}") for i in range(1, chaos.ingests + 1)]
    figures.update(
        ingest_kills=chaos.kills,
        results=len(client.results.keys() & requests.keys()),
        dead_lettered=len(client.dead & invalid),
        lost=len(missing),
        lost_without_job=len(missing - set(jobs)),
        duplicated_jobs=sum(1 for n in jobs.values() if n > 1),
        degraded=sum(1 for r in client.results.values() if r.get("result", {}).get("degraded")),
        records_seen_again=sum(log.count("kafka_record_redelivered") for log in logs),
    )
    assert figures["duplicated_jobs"] == 0, "a request id has two jobs"
    assert set(jobs) <= set(requests), "a job for a request that was never sent"
    assert client.dead >= invalid, f"{len(invalid - client.dead)} invalid records not dead-lettered"
    assert not client.dead & set(requests.values()), "a valid request was dead-lettered"
    assert {r["status"] for r in client.results.values()} == {"succeeded"}
    return missing


@pytest.mark.timeout(scaled(ci=600, full=2400))
def test_ingest_sigkilled_during_the_stream_loses_no_request_and_makes_no_second_job(
    chaos_stack: Any, services: Any, tmp_path: Path
) -> None:
    valid, invalid, kills = scaled(ci=5_000, full=20_000), scaled(ci=12, full=40), KILLS
    figures = record_figures(
        "kafka_ingest_sigkill", requests=valid, invalid_records=invalid, kills_planned=kills
    )
    requests, values = _traffic(valid, invalid, seed=5)
    with _deployed(services, chaos_stack, tmp_path) as (chaos, client):
        started = time.monotonic()
        _stream(chaos, values, kills)
        _wait_for_answers(client, requests, values)
        figures["seconds"] = round(time.monotonic() - started, 1)
    missing = _check(figures, chaos, client, services.postgres.dsn, requests, values)
    assert not missing, f"{len(missing)} requests never got a result record"


@pytest.mark.timeout(scaled(ci=600, full=2400))
def test_a_broker_restart_that_loses_its_log_loses_no_request(
    chaos_stack: Any, services: Any, tmp_path: Path
) -> None:
    valid, invalid = scaled(ci=1_000, full=6_000), scaled(ci=6, full=20)
    figures = record_figures(
        "kafka_broker_restart", requests=valid, invalid_records=invalid, broker_restarts=1
    )
    requests, values = _traffic(valid, invalid, seed=6)
    first, second = values[: len(values) // 2], values[len(values) // 2 :]
    with _deployed(services, chaos_stack, tmp_path) as (chaos, client):
        _stream(chaos, first, 2)
        _wait_for_answers(client, requests, first)
        # Everything sent so far is answered; the restart loses the log and the offsets only.
        chaos.tansu.restart(down_seconds=1.0)
        chaos.tansu.broker.create_topics(REQUESTS, RESULTS, DLQ)
        client.epoch += 1
        started = time.monotonic()
        _stream(chaos, second, 2)
        _wait_for_answers(client, requests, values, quiet_seconds=QUIET_SECONDS)
        figures["seconds_after_restart"] = round(time.monotonic() - started, 1)
    missing = _check(figures, chaos, client, services.postgres.dsn, requests, values)
    if missing:
        raise BrokerLogLoss(
            f"{len(missing)} of {valid} requests never got a result "
            f"({figures['lost_without_job']} of them never became a job)"
        )


def _stream(chaos: Run, values: list[bytes], kills: int) -> None:
    """Produce ``values`` in ``kills`` chunks, SIGKILLing the ingest at a random moment after
    each (while it is consuming the chunk) and starting a new one."""
    for chunk in (values[i::kills] for i in range(kills)):
        chaos.produce(chunk)
        chaos.kill_ingest_soon()


def _unanswered(client: Client, requests: dict[str, bytes], values: list[bytes]) -> list[bytes]:
    with client.lock:
        answered = {requests[i] for i in client.results if i in requests} | client.dead
    return [value for value in values if value not in answered]


def _wait_for_answers(
    client: Client, requests: dict[str, bytes], values: list[bytes], quiet_seconds: float = 60
) -> None:
    """Until each of ``values`` is answered, or nothing new was answered for ``quiet_seconds``
    (the caller then finds out what is missing). The quiet time counts from this call at the
    earliest: the answers to what was just sent cannot have come yet."""
    client.last_answer = max(client.last_answer, time.monotonic())
    while _unanswered(client, requests, values):
        if time.monotonic() - client.last_answer > quiet_seconds:
            return
        time.sleep(0.5)
