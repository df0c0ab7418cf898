"""Group commit in the API: submits (and reads) that arrive together share a transaction, and
each caller still gets its own answer or its own error. Real PostgreSQL (migrated); no broker
(the outbox sender is replaced by a no-op)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import func, select

from api import grouped
from core.config import Settings
from core.db.models import Job
from core.db.session import Database
from core.errors import InferqError, InvalidInput, NotFound
from core.jobs.submit import JobRequest, Submission, Submitted
from core.security.tenants import ensure_tenant


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.jobs.outbox.send_run_items", lambda *_a, **_k: None)


def tenant(db: Database, name: str = "acme") -> int:
    with db.transaction() as session:
        return ensure_tenant(session, name).id


def submission(tenant_id: int, text: str) -> Submission:
    return Submission(tenant_id, JobRequest("sentiment", [text]), job_id=uuid.uuid4())


def counted(submits: grouped.Grouped[Any, Any], sizes: list[int]) -> None:
    """Record how many calls each transaction served."""
    work = submits.work

    def counting(group: Sequence[Any]) -> Sequence[Any]:
        sizes.append(len(group))
        return work(group)

    submits.work = counting


def test_concurrent_submits_share_transactions_and_each_gets_its_own_job(
    pg_db: Database,
) -> None:
    tenant_id = tenant(pg_db)
    submits = grouped.submits(pg_db, Settings())
    submits.max_group = 16
    sizes: list[int] = []
    counted(submits, sizes)
    wanted = [submission(tenant_id, f"film {n}") for n in range(40)]

    async def all_at_once() -> list[Submitted]:
        return await asyncio.gather(*(submits(s) for s in wanted))

    answers = asyncio.run(all_at_once())

    assert [a.job.id for a in answers] == [s.job_id for s in wanted]
    assert all(a.created for a in answers)
    assert sum(sizes) == 40
    assert len(sizes) < 40  # grouped: the first alone, then what waited behind it
    assert max(sizes) <= 16
    with pg_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 40


def test_a_refused_submit_fails_alone(pg_db: Database) -> None:
    tenant_id = tenant(pg_db)
    submits = grouped.submits(pg_db, Settings())

    async def together() -> list[Submitted | BaseException]:
        calls = [
            submits(submission(tenant_id, "fine")),
            submits(submission(tenant_id, "bad\x00text")),
            submits(submission(tenant_id, "also fine")),
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    first, refused, last = asyncio.run(together())
    assert isinstance(refused, InvalidInput)
    assert isinstance(first, Submitted)
    assert isinstance(last, Submitted)


def test_a_failed_transaction_answers_every_caller_in_it_with_the_error() -> None:
    def database_down(_group: Sequence[str]) -> list[str | InferqError]:
        raise ConnectionError("database down")

    down: grouped.Grouped[str, str] = grouped.Grouped(database_down)

    async def two() -> list[str | BaseException]:
        return await asyncio.gather(down("one"), down("two"), return_exceptions=True)

    assert [type(answer) for answer in asyncio.run(two())] == [ConnectionError, ConnectionError]


def test_grouped_reads_answer_each_caller_with_its_job_and_hide_other_tenants(
    pg_db: Database,
) -> None:
    acme, other = tenant(pg_db, "acme"), tenant(pg_db, "other")
    submits = grouped.submits(pg_db, Settings())
    reads = grouped.reads(pg_db)

    async def go() -> list[Any]:
        jobs = [await submits(submission(acme, f"text {n}")) for n in range(3)]
        calls = [reads((acme, j.job.id)) for j in jobs] + [reads((other, jobs[0].job.id))]
        return await asyncio.gather(*calls, return_exceptions=True)

    *views, hidden = asyncio.run(go())
    assert [(view.status, view.counts.total) for view in views] == [("queued", 1)] * 3
    assert len({view.id for view in views}) == 3
    assert isinstance(hidden, NotFound)
