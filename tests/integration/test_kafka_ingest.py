"""The Kafka door against real services: a tansu broker (Kafka protocol), PostgreSQL, Redis, and
`inferq ingest`, `inferq worker` and `inferq beat` as separate processes."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message
from sqlalchemy import func, select

from core.db.models import Job, KafkaRecord
from core.db.session import Database
from tests.integration.conftest import Deployment, deployed
from tests.kafka import FAST_GROUP, Broker, running_tansu
from tests.services import Stack, free_port, wait_for

pytestmark = pytest.mark.integration

REQUESTS, RESULTS, DLQ = "inferq.requests", "inferq.results", "inferq.requests.dlq"
GROUP = "inferq-ingest"
POSITIVE = "a warm , funny and deeply moving film that i loved from start to finish ."
NEGATIVE = "a tedious , clumsy mess with flat acting and a script that never works ."


def _consumer_options(**extra: int) -> str:
    return json.dumps({**FAST_GROUP, "auto.commit.interval.ms": 200, **extra})


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with running_tansu(tmp_path_factory.mktemp("tansu") / "tansu.log") as running:
        running.create_topics(REQUESTS, RESULTS, DLQ)
        yield running


def kafka_env(broker: Broker) -> dict[str, str]:
    """The settings that point a deployment's ingest at ``broker`` with a fast-polling group."""
    return {
        "INFERQ_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "INFERQ_KAFKA_GROUP_ID": GROUP,
        "INFERQ_KAFKA_CONSUMER_OPTIONS": _consumer_options(),
        "INFERQ_KAFKA_POLL_TIMEOUT_SECONDS": "0.2",
    }


@pytest.fixture(scope="module")
def kafka(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    env = kafka_env(broker)
    with deployed(tmp_path_factory.mktemp("kafka"), 10, **env) as running:
        _start_ingest(running.stack)
        yield running


@pytest.fixture(scope="module")
def database(kafka: Deployment) -> Iterator[Database]:
    db = Database(kafka.stack.env["INFERQ_DATABASE_URL"])
    yield db
    db.dispose()


def _start_ingest(stack: Stack, name: str = "ingest") -> None:
    stack.start(name, "ingest")
    wait_for(
        lambda: "kafka_partitions_assigned" in stack.log(name), 30, f"{name} to join", stack, name
    )


def _request(text: str = POSITIVE, task: str = "sentiment", **extra: Any) -> dict[str, Any]:
    return {"id": f"req-{uuid.uuid4()}", "task": task, "text": text, **extra}


def _jobs_per_id(database: Database, ids: list[str]) -> dict[str, int]:
    keys = [f"kafka:{message_id}" for message_id in ids]
    with database.read() as session:
        rows = session.execute(
            select(Job.idempotency_key, func.count())
            .where(Job.idempotency_key.in_(keys))
            .group_by(Job.idempotency_key)
        ).tuples()
        return {str(key).removeprefix("kafka:"): count for key, count in rows}


def _results_for(broker: Broker, ids: list[str], timeout: float = 45) -> dict[str, dict[str, Any]]:
    """The result records of these request ids, by id, once all are on the results topic."""
    wanted = set(ids)

    def keyed(records: list[Message]) -> dict[str, dict[str, Any]]:
        return {
            (m.key() or b"").decode(): json.loads(m.value() or b"")
            for m in records
            if (m.key() or b"").decode() in wanted
        }

    def all_there(records: list[Message]) -> bool:
        return set(keyed(records)) == wanted

    return keyed(broker.read(RESULTS, all_there, timeout=timeout))


def test_each_valid_request_becomes_one_job_and_one_result_record(
    broker: Broker, kafka: Deployment, database: Database
) -> None:
    requests = [
        _request(POSITIVE, metadata={"order": 42}),
        _request(NEGATIVE),
        _request("hello world", task="embed"),
    ]
    ids = [r["id"] for r in requests]

    broker.produce_json(REQUESTS, requests)
    results = _results_for(broker, ids)

    assert _jobs_per_id(database, ids) == dict.fromkeys(ids, 1)
    positive, negative, embedded = (results[i] for i in ids)
    assert positive["status"] == "succeeded" and "error" not in positive
    assert positive["task"] == "sentiment" and positive["metadata"] == {"order": 42}
    assert positive["result"]["label"] == "positive" and positive["result"]["tier"] == "primary"
    assert {"model", "version", "degraded", "cached", "score"} <= set(positive["result"])
    assert negative["result"]["label"] == "negative"
    assert len(embedded["result"]["embedding"]) == 384


def test_a_request_answered_from_the_cache_still_gets_its_result_record(
    broker: Broker, kafka: Deployment
) -> None:
    first = _request("an utterly charming little film .")
    broker.produce_json(REQUESTS, [first])
    _results_for(broker, [first["id"]])
    again = _request("an utterly charming little film .")

    broker.produce_json(REQUESTS, [again])
    result = _results_for(broker, [again["id"]])[again["id"]]

    assert result["status"] == "succeeded"
    assert result["result"]["cached"] is True


def test_a_request_sent_again_after_its_job_finished_is_answered_again(
    broker: Broker, kafka: Deployment, database: Database
) -> None:
    request = _request(f"{NEGATIVE} once more")
    broker.produce_json(REQUESTS, [request])
    _results_for(broker, [request["id"]])

    broker.produce_json(REQUESTS, [request])  # the producer retried after it was answered

    def answered_twice(records: list[Message]) -> bool:
        return sum((m.key() or b"").decode() == request["id"] for m in records) >= 2

    records = [
        m
        for m in broker.read(RESULTS, answered_twice)
        if (m.key() or b"") == request["id"].encode()
    ]
    assert len(records) == 2 and records[0].value() == records[1].value()
    assert _jobs_per_id(database, [request["id"]]) == {request["id"]: 1}


def test_redelivered_records_never_create_a_second_job(
    broker: Broker, kafka: Deployment, database: Database, tmp_path: Path
) -> None:
    topic, group = "redelivery.requests", "inferq-ingest-redelivery"
    broker.create_topics(topic)
    requests = [_request(f"{POSITIVE} take {n}") for n in range(4)]
    ids = [r["id"] for r in requests]
    broker.produce_json(topic, [*requests, requests[0]])  # the first one produced twice
    env = {**kafka.stack.env, "INFERQ_KAFKA_REQUESTS_TOPIC": topic, "INFERQ_KAFKA_GROUP_ID": group}
    slow_commit = _consumer_options(**{"auto.commit.interval.ms": 600_000})
    stack = Stack({**env, "INFERQ_KAFKA_CONSUMER_OPTIONS": slow_commit}, tmp_path)
    try:
        _start_ingest(stack, "first")
        wait_for(lambda: len(_jobs_per_id(database, ids)) == 4, 30, "the jobs", stack, "first")
        stack.kill("first")  # SIGKILL before any offset was committed: all of it comes again
        assert broker.committed(group, topic) == {}

        stack.env = env
        _start_ingest(stack, "second")
        wait_for(
            lambda: broker.committed(group, topic) == broker.end_offsets(topic),
            30,
            "the second ingest to commit what it re-read",
            stack,
            "second",
        )
    finally:
        stack.stop_all()

    assert _jobs_per_id(database, ids) == dict.fromkeys(ids, 1)
    with database.read() as session:
        records = session.scalar(
            select(func.count()).select_from(KafkaRecord).where(KafkaRecord.message_id == ids[0])
        )
    assert records == 2  # two offsets, one job
    assert stack.log("second").count("kafka_record_redelivered") == 5


BAD = {
    "not JSON": (b"this is { not json", "invalid-json"),
    "invalid UTF-8": (b'{"id": "x", "task": "sentiment", "text": "\xff\xfe"}', "invalid-utf8"),
    "missing text": (b'{"id": "x", "task": "sentiment"}', "invalid-envelope"),
    "wrong type": (b'{"id": 7, "task": "sentiment", "text": "hi"}', "invalid-envelope"),
    "unknown field": (b'{"id": "x", "task": "embed", "text": "hi", "v": 1}', "invalid-envelope"),
    "unknown task": (b'{"id": "x", "task": "no-such-task", "text": "hi"}', "unknown-task"),
    "NUL in text": (b'{"id": "x", "task": "sentiment", "text": "a\\u0000b"}', "invalid-input"),
    "lone surrogate": (b'{"id": "x", "task": "sentiment", "text": "a\\ud800b"}', "invalid-input"),
    "too long": (json.dumps(_request("x" * 10_001)).encode(), "invalid-input"),
    "no value": (None, "empty"),
}


def test_bad_records_go_to_the_dlq_with_a_reason_and_consumption_goes_on(
    broker: Broker, kafka: Deployment, database: Database
) -> None:
    trace = [("trace", uuid.uuid4().hex.encode())]
    valid = _request(NEGATIVE)
    conflicting = json.dumps({**valid, "text": POSITIVE}).encode()  # same id, another request

    broker.produce(REQUESTS, [value for value, _ in BAD.values()], headers=trace)
    broker.produce_json(REQUESTS, [valid])
    wait_for(lambda: _jobs_per_id(database, [valid["id"]]), 30, "the valid one", kafka.stack)
    broker.produce(REQUESTS, [conflicting], headers=trace)
    expected = {value: error for value, error in BAD.values()} | {
        conflicting: "idempotency-conflict"
    }
    dead = broker.read(DLQ, lambda records: len(_traced(records, trace)) == len(expected))

    reasons = {m.value(): _reason(m) for m in _traced(dead, trace)}
    assert {value: reason["error"] for value, reason in reasons.items()} == expected
    assert all(r["topic"] == REQUESTS and r["detail"] for r in reasons.values())
    assert _jobs_per_id(database, [valid["id"]]) == {valid["id"]: 1}
    assert kafka.stack.processes["ingest"].poll() is None, "ingest stopped"


def _traced(records: list[Message], trace: list[tuple[str, bytes]]) -> list[Message]:
    return [m for m in records if set(trace) <= set(m.headers() or [])]


def _reason(message: Message) -> dict[str, Any]:
    reason: dict[str, Any] = json.loads(dict(message.headers() or [])["inferq-dlq-reason"])
    return reason


def test_offsets_are_committed_only_after_the_jobs_are(
    broker: Broker, kafka: Deployment, database: Database, tmp_path: Path
) -> None:
    topic, group = "dead-db.requests", "inferq-ingest-dead-db"
    broker.create_topics(topic)
    requests = [_request(f"{NEGATIVE} part {n}") for n in range(3)]
    ids = [r["id"] for r in requests]
    broker.produce_json(topic, requests)
    env = {**kafka.stack.env, "INFERQ_KAFKA_REQUESTS_TOPIC": topic, "INFERQ_KAFKA_GROUP_ID": group}
    gone = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone"

    dead = Stack({**env, "INFERQ_DATABASE_URL": gone}, tmp_path)
    try:
        _start_ingest(dead)
        wait_for(lambda: dead.log("ingest").count("kafka_batch_failed") >= 3, 30, "retries", dead)
        assert broker.committed(group, topic) == {}
        _stop(dead, "ingest")  # SIGTERM: commits what it stored, which is nothing
        assert broker.committed(group, topic) == {}
    finally:
        dead.stop_all()

    # The database is back: the same records become jobs. Auto-commit is ten minutes away, so
    # only the graceful shutdown can commit the offsets it stored after the jobs committed.
    slow_commit = _consumer_options(**{"auto.commit.interval.ms": 600_000})
    alive = Stack({**env, "INFERQ_KAFKA_CONSUMER_OPTIONS": slow_commit}, tmp_path)
    try:
        _start_ingest(alive, "ingest-alive")
        wait_for(lambda: len(_jobs_per_id(database, ids)) == 3, 30, "the jobs", alive)
        assert broker.committed(group, topic) == {}
        _stop(alive, "ingest-alive")
        assert broker.committed(group, topic) == broker.end_offsets(topic)
    finally:
        alive.stop_all()
    assert _jobs_per_id(database, ids) == dict.fromkeys(ids, 1)


def _stop(stack: Stack, name: str) -> None:
    process = stack.processes[name]
    stack.kill(name, signal.SIGTERM)
    assert process.returncode == 0, stack.log(name)[-2000:]
