"""Batches in core: streamed writing, refused lines, duplicate ids across windows, fair dispatch,
counts kept by the transactions that finish items, cancel, expiry, results in input order.

Real database (migrated SQLite, and a fresh PostgreSQL database: row locks, SKIP LOCKED, the
json_to_recordset inserts); a fake model registered as a task; no broker: the outbox sender is a
recorder (the same fixture as test_jobs_lifecycle), and the recorded messages are run by
``run_batch`` the way a worker runs them.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from core.config import Settings
from core.db.models import Batch, Job, JobItem, utcnow
from core.db.session import Database
from core.errors import InvalidInput, InvalidTransition, NotNdjson, PayloadTooLarge
from core.inference.engine import InferenceEngine
from core.jobs import batch_results, batch_writer, batches
from core.jobs.batch_input import file_lines, ndjson_lines
from core.jobs.execute import Delivery, Worker, run_batch
from core.jobs.sweeper import sweep
from tests.unit.test_jobs_lifecycle import Sent, count, db, fake_tasks, sent, tenant

__all__ = ["db", "fake_tasks", "sent"]  # fixtures shared with test_jobs_lifecycle

pytestmark = pytest.mark.usefixtures("fake_tasks")


def config(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "chunk_size": 32,
        "batch_job_size": 4,
        "batch_jobs_in_flight": 2,
        "batch_sort_window": 8,
        **overrides,
    }
    return Settings(**values)


def ndjson(rows: list[Any]) -> list[bytes]:
    return [(row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows]


def create(
    db: Database, tenant_id: int, body: list[bytes], settings: Settings, **request: Any
) -> uuid.UUID:
    with db.transaction() as session:
        spec = batches.BatchRequest(request.pop("task", "fake"), **request)
        batch = batches.open_batch(session, settings, tenant_id, spec)
        writer = batch_writer.BatchWriter(session, settings, batch)
        writer.add_all(ndjson_lines(body, settings))
        writer.finish()
        return batch.id


def read(db: Database, batch_id: uuid.UUID) -> Batch:
    with db.read() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        session.expunge(batch)
        return batch


def work(db: Database, sent: list[Sent], settings: Settings, rounds: int = 100) -> None:
    """Run what was sent, message by message, until nothing more is sent."""
    engine = InferenceEngine(device="cpu")
    for _ in range(rounds):
        if not sent:
            return
        message = sent.pop(0)
        run_batch(
            Worker(db, engine, settings), [Delivery(uuid.UUID(message.job_id), message.item_ids)]
        )
    raise AssertionError("work did not drain")


def results(db: Database, batch_id: uuid.UUID, **options: Any) -> list[dict[str, Any]]:
    return list(batch_results.iter_results(db, batch_id, **options))


def test_every_line_gets_one_result_line_in_input_order_bad_lines_included(
    db: Database, sent: list[Sent]
) -> None:
    settings = config()
    tenant_id = tenant(db)
    body = ndjson(
        [
            {"id": "a", "text": "a good film"},
            {"text": "a bad film"},  # id defaults to the line number
            b"{not json",
            {"id": "no-text"},
            {"id": "empty", "text": "   "},
            {"id": "nul", "text": "bad\x00byte"},
            b'{"id": "surrogate", "text": "lone \\ud800 surrogate"}',
            {"id": "long", "text": "x" * (settings.max_text_chars + 1)},
            {"id": "a", "text": "duplicate of the first id"},
            b"\xff\xfe not utf-8",
            {"id": 7, "text": "good again"},
            b"   ",  # a blank line is skipped, not counted
            {"id": "last", "text": "the very last good line, longer than the others"},
        ]
    )
    batch_id = create(db, tenant_id, body, settings)
    assert read(db, batch_id).status == "in_progress"
    work(db, sent, settings)

    batch = read(db, batch_id)
    assert batch.status == "completed"
    assert (batch.total, batch.completed, batch.failed, batch.cancelled) == (12, 4, 8, 0)
    lines = results(db, batch_id)
    assert [line["id"] for line in lines] == [
        "a",
        "2",
        "3",
        "no-text",
        "empty",
        "nul",
        "surrogate",
        "long",
        "a",
        "10",
        "7",
        "last",
    ]
    codes = [line["error"]["code"] for line in lines if "error" in line]
    assert codes == [
        "invalid_json",
        "missing_text",
        "invalid_text",
        "invalid_text",
        "invalid_text",
        "invalid_text",
        "duplicate_id",
        "invalid_utf8",
    ]
    assert lines[0]["result"]["label"] == "positive" and lines[1]["result"]["label"] == "negative"
    assert lines[2]["line"] == 3 and "not JSON" in lines[2]["error"]["message"]
    assert "NUL" in lines[5]["error"]["message"] and "surrogate" in lines[6]["error"]["message"]
    errors = results(db, batch_id, only_errors=True)
    assert [line["id"] for line in errors] == [line["id"] for line in lines if "error" in line]


def test_duplicate_ids_are_found_across_windows(db: Database, sent: list[Sent]) -> None:
    settings = config(batch_sort_window=2)
    body = ndjson([{"id": str(i % 5), "text": f"text {i}"} for i in range(12)])
    batch_id = create(db, tenant(db), body, settings)
    work(db, sent, settings)
    lines = results(db, batch_id)
    assert [line["id"] for line in lines if "result" in line] == ["0", "1", "2", "3", "4"]
    assert {line["error"]["code"] for line in lines if "error" in line} == {"duplicate_id"}
    assert read(db, batch_id).failed == 7


def test_a_window_is_sorted_by_length_into_jobs_and_lines_keep_their_order(
    db: Database, sent: list[Sent]
) -> None:
    settings = config(batch_job_size=2, batch_sort_window=6, batch_jobs_in_flight=10)
    texts = ["x" * n for n in (9, 1, 7, 3, 5, 2)]
    batch_id = create(db, tenant(db), ndjson([{"text": t} for t in texts]), settings)
    with db.read() as session:
        rows = session.execute(
            select(Job.batch_seq, JobItem.line, JobItem.text)
            .join(Job, Job.id == JobItem.job_id)
            .where(JobItem.batch_id == batch_id)
            .order_by(Job.batch_seq, JobItem.index)
        ).all()
    by_job: dict[int, list[int]] = {}
    for seq, _line, text in rows:
        by_job.setdefault(seq, []).append(len(text))
    assert list(by_job.values()) == [[1, 2], [3, 5], [7, 9]]  # each job: neighbours in length
    work(db, sent, settings)
    assert [len(line["id"]) for line in results(db, batch_id)] == [1] * 6
    assert [line["id"] for line in results(db, batch_id)] == ["1", "2", "3", "4", "5", "6"]


def test_dispatch_keeps_a_few_jobs_per_batch_in_flight_and_serves_batches_in_turn(
    db: Database, sent: list[Sent]
) -> None:
    settings = config(batch_job_size=4, batch_jobs_in_flight=2, batch_sort_window=64)
    big = create(db, tenant(db, "big"), ndjson([{"text": f"big {i}"} for i in range(40)]), settings)
    # 2 jobs of 4 in flight: 8 of 40 items handed to the queue, the rest wait in PostgreSQL.
    assert sum(len(m.item_ids) for m in sent) == 8
    small = create(
        db, tenant(db, "small"), ndjson([{"text": f"s {i}"} for i in range(6)]), settings
    )
    assert sum(len(m.item_ids) for m in sent) == 8 + 6  # its own share, at once
    order: list[str] = []
    engine = InferenceEngine(device="cpu")
    while sent:
        message = sent.pop(0)
        with db.read() as session:
            owner = session.scalar(select(Job.batch_id).where(Job.id == uuid.UUID(message.job_id)))
        order.append("big" if owner == big else "small")
        run_batch(
            Worker(db, engine, settings), [Delivery(uuid.UUID(message.job_id), message.item_ids)]
        )
    # The small batch finished within the first few messages, not after the big one.
    assert max(i for i, name in enumerate(order) if name == "small") < 5
    assert read(db, big).status == read(db, small).status == "completed"
    assert read(db, big).completed == 40


def test_counts_are_kept_by_the_transactions_that_finish_items(
    db: Database, sent: list[Sent]
) -> None:
    settings = config(batch_job_size=8, batch_jobs_in_flight=1, batch_sort_window=64)
    batch_id = create(db, tenant(db), ndjson([{"text": f"t {i}"} for i in range(24)]), settings)
    seen = []
    engine = InferenceEngine(device="cpu")
    while sent:
        message = sent.pop(0)
        run_batch(
            Worker(db, engine, settings), [Delivery(uuid.UUID(message.job_id), message.item_ids)]
        )
        batch = read(db, batch_id)
        seen.append((batch.completed, batch.status))
    assert seen == [(8, "in_progress"), (16, "in_progress"), (24, "completed")]


def test_cancel_keeps_what_ran_and_cancels_the_rest(db: Database, sent: list[Sent]) -> None:
    settings = config(batch_job_size=4, batch_jobs_in_flight=1, batch_sort_window=64)
    tenant_id = tenant(db)
    batch_id = create(db, tenant_id, ndjson([{"text": f"t {i}"} for i in range(20)]), settings)
    engine = InferenceEngine(device="cpu")
    first = sent.pop(0)
    run_batch(Worker(db, engine, settings), [Delivery(uuid.UUID(first.job_id), first.item_ids)])
    with db.transaction() as session:
        batch = batches.cancel_batch(session, tenant_id, batch_id)
        assert batch.status == "cancelled"
    batch = read(db, batch_id)
    assert (batch.completed, batch.cancelled, batch.total) == (4, 16, 20)
    work(db, sent, settings)  # the message sent before the cancel finds nothing to run
    assert read(db, batch_id).completed == 4
    lines = results(db, batch_id)
    assert len(lines) == 20
    assert sum("result" in line for line in lines) == 4
    assert {line["error"]["code"] for line in lines if "error" in line} == {"cancelled"}
    with db.transaction() as session, pytest.raises(InvalidTransition):
        batches.cancel_batch(session, tenant_id, batch_id)


def test_a_batch_past_its_window_expires_its_unfinished_lines(
    db: Database, sent: list[Sent]
) -> None:
    settings = config(batch_job_size=4, batch_jobs_in_flight=1, batch_sort_window=64)
    batch_id = create(
        db,
        tenant(db),
        ndjson([{"text": f"t {i}"} for i in range(12)]),
        settings,
        completion_window="1h",
    )
    engine = InferenceEngine(device="cpu")
    first = sent.pop(0)
    run_batch(Worker(db, engine, settings), [Delivery(uuid.UUID(first.job_id), first.item_ids)])
    with db.transaction() as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with db.transaction() as session:
        assert sweep(session, settings).expired_batches == 1
    batch = read(db, batch_id)
    assert batch.status == "expired" and batch.expired_at is not None
    assert (batch.completed, batch.failed) == (4, 8)
    codes = [line["error"]["code"] for line in results(db, batch_id) if "error" in line]
    assert codes == ["expired"] * 8
    work(db, sent, settings)
    assert read(db, batch_id).completed == 4  # a late message changes nothing


def test_bodies_that_are_not_a_batch_are_refused(db: Database) -> None:
    settings = config(max_batch_lines=3)
    tenant_id = tenant(db)
    with pytest.raises(NotNdjson):
        create(db, tenant_id, [b"hello\nworld\n"], settings)
    with pytest.raises(InvalidInput, match="no lines"):
        create(db, tenant_id, [b"\n\n"], settings)
    with pytest.raises(PayloadTooLarge, match="at most 3 lines"):
        create(db, tenant_id, ndjson([{"text": f"t {i}"} for i in range(4)]), settings)
    with pytest.raises(InvalidInput, match="completion_window"):
        create(db, tenant_id, ndjson([{"text": "t"}]), settings, completion_window="soon")
    assert count(db, Batch) == 0  # nothing half-written


def test_a_cached_or_refused_only_batch_is_over_at_once(db: Database, sent: list[Sent]) -> None:
    settings = config()
    batch_id = create(db, tenant(db), ndjson([{"text": ""}, {"id": 1}]), settings)
    batch = read(db, batch_id)
    assert batch.status == "failed" and batch.failed == 2 and not sent


def test_files_are_read_as_a_stream_in_every_format(tmp_path: Any) -> None:
    import gzip

    settings = config()
    (tmp_path / "a.jsonl.gz").write_bytes(
        gzip.compress(b'{"id": "x", "text": "one"}\n\n{"text": "two"}\n')
    )
    (tmp_path / "b.csv").write_text('id,text\nr1,"one, with a comma"\nr2,\n', encoding="utf-8")
    (tmp_path / "c.txt").write_bytes(b"first\n\nthird \xff\n")
    assert [(li.id, li.text) for li in file_lines(tmp_path / "a.jsonl.gz", settings)] == [
        ("x", "one"),
        ("3", "two"),
    ]
    csv_lines = list(file_lines(tmp_path / "b.csv", settings))
    assert [(li.id, li.text, li.error_code) for li in csv_lines] == [
        ("r1", "one, with a comma", None),
        ("r2", None, "invalid_text"),
    ]
    text_lines = list(file_lines(tmp_path / "c.txt", settings))
    assert [(li.number, li.text, li.error_code) for li in text_lines] == [
        (1, "first", None),
        (3, None, "invalid_utf8"),
    ]


def test_an_endless_line_is_refused_without_being_held() -> None:
    from core.jobs.batch_input import split_lines

    chunks = [b'{"text": "ok"}\n', b"x" * 5000, b"y" * 5000, b"\n", b'{"text": "after"}']
    assert list(split_lines(chunks, limit=4096)) == [b'{"text": "ok"}', None, b'{"text": "after"}']


def test_completion_windows_read_as_durations() -> None:
    assert batches.window_seconds("24h") == 86400
    assert batches.window_seconds("30m") == 1800
    assert batches.window_text(86400) == "24h" and batches.window_text(90) == "90s"
    with pytest.raises(InvalidInput):
        batches.window_seconds("0h")
