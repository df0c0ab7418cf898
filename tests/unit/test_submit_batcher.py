"""Group commit in the API: submits that arrive together share a transaction, and each caller
still gets its own job or its own error. Real PostgreSQL (migrated); no broker (the outbox
sender is replaced by a no-op)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from api.submits import SubmitBatcher
from core.config import Settings
from core.db.models import Job
from core.db.session import Database
from core.errors import InvalidInput
from core.jobs.submit import JobRequest, Submission, Submitted
from core.security import ensure_tenant


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.jobs.outbox.send_run_items", lambda *_a, **_k: None)


class CountingBatcher(SubmitBatcher):
    """Counts the transactions it writes and how many submits each held."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def _write(self, submissions: Any) -> Any:
        self.batches.append(len(submissions))
        return super()._write(submissions)


def tenant(db: Database) -> int:
    with db.transaction() as session:
        return ensure_tenant(session, "acme").id


def submission(tenant_id: int, text: str) -> Submission:
    return Submission(tenant_id, JobRequest("sentiment", [text]), job_id=uuid.uuid4())


def test_concurrent_submits_share_transactions_and_each_gets_its_own_job(
    pg_db: Database,
) -> None:
    tenant_id = tenant(pg_db)
    batcher = CountingBatcher(pg_db, Settings(), max_batch=16)
    wanted = [submission(tenant_id, f"film {n}") for n in range(40)]

    async def all_at_once() -> list[Submitted]:
        return await asyncio.gather(*(batcher.submit(s) for s in wanted))

    answers = asyncio.run(all_at_once())

    assert [a.job.id for a in answers] == [s.job_id for s in wanted]
    assert all(a.created for a in answers)
    assert sum(batcher.batches) == 40
    assert len(batcher.batches) < 40  # grouped: the first alone, then what waited behind it
    assert max(batcher.batches) <= 16
    with pg_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 40


def test_a_refused_submit_fails_alone(pg_db: Database) -> None:
    tenant_id = tenant(pg_db)
    batcher = SubmitBatcher(pg_db, Settings())

    async def together() -> list[Submitted | BaseException]:
        calls = [
            batcher.submit(submission(tenant_id, "fine")),
            batcher.submit(submission(tenant_id, "bad\x00text")),
            batcher.submit(submission(tenant_id, "also fine")),
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    first, refused, last = asyncio.run(together())
    assert isinstance(refused, InvalidInput)
    assert isinstance(first, Submitted)
    assert isinstance(last, Submitted)


def test_a_failed_transaction_answers_every_caller_in_it_with_the_error(
    pg_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = tenant(pg_db)
    batcher = SubmitBatcher(pg_db, Settings())

    def database_down(*_args: Any) -> Any:
        raise ConnectionError("database down")

    monkeypatch.setattr(batcher, "_write", database_down)

    async def two() -> list[Submitted | BaseException]:
        calls = [batcher.submit(submission(tenant_id, t)) for t in ("one", "two")]
        return await asyncio.gather(*calls, return_exceptions=True)

    assert [type(answer) for answer in asyncio.run(two())] == [ConnectionError, ConnectionError]
