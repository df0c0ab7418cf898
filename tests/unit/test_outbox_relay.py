"""The immediate outbox relay: many jobs' rows in few broker messages, and commits made while
another thread relays handed to that thread instead of relaying again.

Real database (migrated PostgreSQL); a fake broker (``send_run_items`` replaced by a recorder),
so a test sees exactly which messages would leave the process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from core.broker import RunItems, run_items_of
from core.db.models import OutboxMessage
from core.db.session import Database
from core.jobs import outbox


@dataclass
class Message:
    entries: list[RunItems]
    queue: str
    task: str | None
    tokens: int | None


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch) -> list[Message]:
    sent: list[Message] = []

    def record(_app: Any, entries: Sequence[RunItems], **kwargs: Any) -> None:
        sent.append(Message(list(entries), kwargs["queue"], kwargs["task"], kwargs["tokens"]))

    monkeypatch.setattr("core.jobs.outbox.send_run_items", record)
    return sent


def write_job_rows(
    db: Database, job: str, items: int, *, chunk_size: int = 32, queue: str = "interactive"
) -> list[int]:
    with db.transaction() as session:
        return outbox.add_run_items(
            session,
            job,
            list(range(items)),
            task="sentiment",
            queue=queue,
            chunk_size=chunk_size,
            request_id=f"req-{job}",
            tokens=[10] * items,
        )


def unsent(db: Database) -> int:
    with db.read() as session:
        query = select(func.count()).where(OutboxMessage.sent_at.is_(None))
        return int(session.scalar(query) or 0)


def test_rows_of_many_jobs_share_messages_up_to_the_item_limit(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch, messages: list[Message]
) -> None:
    monkeypatch.setattr("core.jobs.outbox.relay_after_commit", lambda *_args: None)
    for n in range(40):
        write_job_rows(pg_db, f"job-{n}", 1)
    write_job_rows(pg_db, "bulk-job", 3, queue="bulk")
    with pg_db.transaction() as session:
        assert outbox.relay(session) == 41

    interactive = [m for m in messages if m.queue == "interactive"]
    assert [len(m.entries) for m in interactive] == [32, 8]
    assert [e.job_id for m in interactive for e in m.entries] == [f"job-{n}" for n in range(40)]
    assert interactive[0].tokens == 32 * 10
    assert [(m.queue, [e.job_id for e in m.entries]) for m in messages if m.queue == "bulk"] == [
        ("bulk", ["bulk-job"])
    ]
    assert unsent(pg_db) == 0


def test_a_jobs_chunk_is_never_split_across_messages(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch, messages: list[Message]
) -> None:
    monkeypatch.setattr("core.jobs.outbox.relay_after_commit", lambda *_args: None)
    write_job_rows(pg_db, "small", 20)
    write_job_rows(pg_db, "big", 30)  # 20 + 30 > 32: the second job gets its own message
    with pg_db.transaction() as session:
        outbox.relay(session)
    assert [[(e.job_id, len(e.item_ids)) for e in m.entries] for m in messages] == [
        [("small", 20)],
        [("big", 30)],
    ]


def test_a_commit_while_another_thread_relays_is_sent_by_that_thread(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    sent: list[tuple[str, list[str]]] = []

    def slow_broker(_app: Any, entries: Sequence[RunItems], **_kwargs: Any) -> None:
        sent.append((threading.current_thread().name, [e.job_id for e in entries]))
        entered.set()
        assert release.wait(10)

    monkeypatch.setattr("core.jobs.outbox.send_run_items", slow_broker)
    first = threading.Thread(target=write_job_rows, args=(pg_db, "first", 1), name="first")
    first.start()
    assert entered.wait(10)  # "first" is inside its relay, holding the broker
    write_job_rows(pg_db, "second", 1)  # returns at once: its rows wait for "first"
    assert sent == [("first", ["first"])]
    release.set()
    first.join(10)
    assert sent == [("first", ["first"]), ("first", ["second"])]
    assert unsent(pg_db) == 0


def test_a_failed_immediate_relay_leaves_the_rows_for_the_periodic_relay(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []

    def broker(_app: Any, entries: Sequence[RunItems], **_kwargs: Any) -> None:
        if not sent and not broker.up:  # type: ignore[attr-defined]
            raise ConnectionError("broker down")
        sent.extend(e.job_id for e in entries)

    broker.up = False  # type: ignore[attr-defined]
    monkeypatch.setattr("core.jobs.outbox.send_run_items", broker)
    write_job_rows(pg_db, "job", 2)  # the commit stands; nothing was sent
    assert unsent(pg_db) == 1
    broker.up = True  # type: ignore[attr-defined]
    with pg_db.transaction() as session:  # what beat's relay does
        assert outbox.relay(session) == 1
    assert sent == ["job"]


def test_messages_of_one_job_from_before_the_grouped_format_are_still_read() -> None:
    assert run_items_of(["job-1", [1, 2]], {"request_id": "r"}) == [RunItems("job-1", [1, 2], "r")]
    grouped = [[["job-1", [1], "r1"], ["job-2", [2, 3], None]]]
    assert run_items_of(grouped, {}) == [RunItems("job-1", [1], "r1"), RunItems("job-2", [2, 3])]
