"""Usage per job: how a batch's model seconds are split over its jobs, what counts as cached,
and that nothing is counted twice when work is redelivered; the metrics the worker keeps for
cost and idle capacity; `inferq usage`'s arithmetic.

Real databases (migrated SQLite and a fresh PostgreSQL database: the usage UPDATE differs by
dialect); fake models registered in the task registry; no broker (the outbox sender records).
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from core.broker import RunItems
from core.config import Settings
from core.db.models import Job, utcnow
from core.db.session import Database
from core.inference import registry
from core.inference.engine import InferenceEngine, Output
from core.inference.registry import TaskSpec, TierSpec
from core.inference.types import Prediction
from core.jobs.execute import Delivery, RunReport, Worker, run_batch
from core.jobs.lifecycle import claim_many, record_many
from core.jobs.outbox import estimate_tokens
from core.jobs.presenters import job_out
from core.jobs.queries import get_job
from core.jobs.submit import JobRequest, submit_job
from core.jobs.usage import (
    ModelShare,
    UsageRow,
    cost,
    split_seconds,
    usage_report,
    with_tenant_totals,
)
from core.security.tenants import ensure_tenant
from core.telemetry import gpu
from core.telemetry.metrics import GPU_UTILISATION
from schemas.jobs import JobOut, TierCounts, Usage

# --- fake models ----------------------------------------------------------------------------------


class Counting:
    """Labels every text; tells its version from its 'files' so results are cached."""

    name = "counting"
    version = "counting-1"

    @classmethod
    def current_version(cls) -> str:
        return cls.version

    @classmethod
    def load(cls, device: str) -> Counting:
        return cls()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [Prediction(label="positive", score=0.9) for _ in texts]


class Broken:
    name = "broken"
    version = "broken-1"

    @classmethod
    def load(cls, device: str) -> Broken:
        return cls()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        raise RuntimeError("model exploded")


@pytest.fixture(autouse=True)
def fake_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    chains = {
        "counted": (TierSpec("primary", f"{__name__}:Counting"),),
        "falls-back": (
            TierSpec("primary", f"{__name__}:Broken"),
            TierSpec("fallback", f"{__name__}:Counting"),
        ),
    }
    for task, chain in chains.items():
        monkeypatch.setitem(registry.TASKS, task, TaskSpec(task, "test double", chain))


@pytest.fixture(autouse=True)
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Delivery]:
    """Every run-items message the outbox relay would send, as the worker receives it."""
    messages: list[Delivery] = []

    def record(_app: Any, entries: Sequence[RunItems], **_options: Any) -> None:
        messages.extend(Delivery(uuid.UUID(e.job_id), list(e.item_ids)) for e in entries)

    monkeypatch.setattr("core.jobs.outbox.send_run_items", record)
    return messages


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Database:
    database: Database = request.getfixturevalue(
        "sqlite_db" if request.param == "sqlite" else "pg_db"
    )
    return database


# --- factories ------------------------------------------------------------------------------------

SETTINGS = Settings(chunk_size=32, lease_seconds=60, max_attempts=3, redispatch_after_seconds=60)


def tenant(db: Database, name: str = "acme") -> int:
    with db.transaction() as session:
        return ensure_tenant(session, name).id


def submit(db: Database, tenant_id: int, inputs: Sequence[str], task: str = "counted") -> JobOut:
    """The job as the submit answers it (nothing read back)."""
    with db.transaction() as session:
        written = submit_job(
            session, SETTINGS, tenant_id=tenant_id, request=JobRequest(task, list(inputs))
        ).written
        assert written is not None
        return job_out(written)


def worker(db: Database) -> Worker:
    return Worker(db, InferenceEngine(device="cpu"), SETTINGS)


def run(db: Database, deliveries: Sequence[Delivery]) -> RunReport:
    return run_batch(worker(db), list(deliveries))


def usage_of(db: Database, tenant_id: int, job_id: uuid.UUID) -> Usage:
    with db.read() as session:
        return job_out(get_job(session, tenant_id, job_id)).usage


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the split ------------------------------------------------------------------------------------


def test_a_calls_seconds_are_split_in_proportion_to_tokens_and_add_up() -> None:
    parts = split_seconds(1.2, [10, 30, 20])
    assert parts == pytest.approx([0.2, 0.6, 0.4])
    assert sum(parts) == pytest.approx(1.2)


def test_inputs_without_tokens_share_a_call_equally() -> None:
    assert split_seconds(0.9, [0, 0, 0]) == pytest.approx([0.3, 0.3, 0.3])
    assert split_seconds(0.9, []) == []


def test_a_batch_of_several_jobs_splits_its_model_seconds_by_their_estimated_tokens(
    db: Database, sent: list[Delivery]
) -> None:
    tenant_id = tenant(db)
    texts = {"short": ["ok"], "long": ["a much longer review " * 20], "two": ["fine", "nice one"]}
    jobs = {name: submit(db, tenant_id, inputs).id for name, inputs in texts.items()}
    report = run(db, sent)  # one micro-batch: every job's items in one model call

    usage = {name: usage_of(db, tenant_id, job_id) for name, job_id in jobs.items()}
    tokens = {name: sum(estimate_tokens(t) for t in inputs) for name, inputs in texts.items()}
    assert report.model_seconds > 0
    assert sum(u.model_seconds for u in usage.values()) == pytest.approx(report.model_seconds)
    for name in texts:
        assert usage[name].tokens == tokens[name]
        assert usage[name].model_seconds == pytest.approx(
            report.model_seconds * tokens[name] / sum(tokens.values())
        )
    assert usage["two"].model_dump(exclude={"model_seconds"}) == {
        "inputs": 2,
        "cached_inputs": 0,
        "tokens": tokens["two"],
        "gpu_model_seconds": 0.0,  # device="cpu"
        "tiers": {"primary": 2, "fallback": 0, "rules": 0},
    }


def test_inputs_a_fallback_tier_served_are_counted_under_it(
    db: Database, sent: list[Delivery]
) -> None:
    tenant_id = tenant(db)
    job = submit(db, tenant_id, ["x", "y", "z"], task="falls-back")
    run(db, sent)
    assert usage_of(db, tenant_id, job.id).tiers == TierCounts(primary=0, fallback=3, rules=0)


# --- cached inputs --------------------------------------------------------------------------------


def test_inputs_answered_from_the_cache_at_submit_count_as_cached_with_no_model_time(
    db: Database, sent: list[Delivery]
) -> None:
    tenant_id = tenant(db)
    submit(db, tenant_id, ["seen before"])
    run(db, sent)
    sent.clear()

    answered = submit(db, tenant_id, ["seen before", "new text"])
    assert answered.usage == Usage(inputs=1, cached_inputs=1, tiers=TierCounts(primary=1))
    assert usage_of(db, tenant_id, answered.id) == answered.usage  # as stored
    run(db, sent)

    usage = usage_of(db, tenant_id, answered.id)
    assert (usage.inputs, usage.cached_inputs) == (2, 1)
    assert usage.tokens == estimate_tokens("new text")  # the cached input ran no model
    assert usage.tiers.primary == 2


def test_a_job_answered_whole_at_submit_shows_its_usage(db: Database, sent: list[Delivery]) -> None:
    tenant_id = tenant(db)
    submit(db, tenant_id, ["a", "b"])
    run(db, sent)
    answered = submit(db, tenant_id, ["b", "a"])
    assert answered.status == "succeeded"
    expected = Usage(inputs=2, cached_inputs=2, tiers=TierCounts(primary=2))
    assert answered.usage == expected
    assert usage_of(db, tenant_id, answered.id) == expected


def test_inputs_answered_from_the_cache_in_the_worker_count_as_cached(
    db: Database, sent: list[Delivery]
) -> None:
    tenant_id = tenant(db)
    first = submit(db, tenant_id, ["same text"])
    second = submit(db, tenant_id, ["same text"])  # not cached yet: both go to workers
    first_message, second_message = sent
    run(db, [first_message])
    run(db, [second_message])  # the first's result is in the store by now

    usage = usage_of(db, tenant_id, second.id)
    assert (usage.inputs, usage.cached_inputs, usage.tokens, usage.model_seconds) == (1, 1, 0, 0.0)
    assert usage_of(db, tenant_id, first.id).cached_inputs == 0


# --- redelivery -----------------------------------------------------------------------------------


def test_a_redelivered_batch_adds_no_usage(db: Database, sent: list[Delivery]) -> None:
    tenant_id = tenant(db)
    job = submit(db, tenant_id, ["one", "two"])
    run(db, sent)
    before = usage_of(db, tenant_id, job.id)
    run(db, sent)
    assert usage_of(db, tenant_id, job.id) == before
    assert before.inputs == 2


def test_results_recorded_twice_after_a_lease_ran_out_are_counted_once(
    db: Database, sent: list[Delivery]
) -> None:
    """Two workers held the same items (the first one's lease ran out) and both ran the model:
    the second record finds the items finished and adds nothing."""
    tenant_id = tenant(db)
    job = submit(db, tenant_id, ["one", "two"])
    with db.transaction() as session:
        claim = claim_many(session, {job.id: sent[0].item_ids}, lease_seconds=60, max_attempts=3)
    items = claim[job.id].items
    engine = InferenceEngine(device="cpu")
    outcomes = engine.run("counted", [item.text for item in items])
    done = [(i, o) for i, o in zip(items, outcomes, strict=True) if isinstance(o, Output)]
    shares = {item.id: ModelShare(tokens=5, seconds=0.25) for item in items}
    for _ in range(2):
        with db.transaction() as session:
            record_many(session, {job.id: done}, shares)

    usage = usage_of(db, tenant_id, job.id)
    assert (usage.inputs, usage.tokens) == (2, 10)
    assert usage.model_seconds == pytest.approx(0.5)


# --- the worker's metrics -------------------------------------------------------------------------


def test_the_model_seconds_metric_counts_the_calls_time_under_the_tier_that_served(
    sqlite_db: Database, sent: list[Delivery]
) -> None:
    tenant_id = tenant(sqlite_db)
    submit(sqlite_db, tenant_id, ["p", "q"], task="falls-back")
    fallback = metric("inferq_model_seconds_total", task="falls-back", tier="fallback")
    primary = metric("inferq_model_seconds_total", task="falls-back", tier="primary")
    busy = metric("inferq_worker_busy_seconds_total")

    report = run(sqlite_db, sent)
    spent = metric("inferq_model_seconds_total", task="falls-back", tier="fallback") - fallback
    assert spent == pytest.approx(report.model_seconds)
    assert metric("inferq_model_seconds_total", task="falls-back", tier="primary") == primary
    # The pool process was busy for the whole batch, the model call being part of it.
    assert metric("inferq_worker_busy_seconds_total") - busy >= report.model_seconds


def test_failed_inputs_model_seconds_go_to_tier_none_and_to_no_job(
    sqlite_db: Database, sent: list[Delivery], monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = (TierSpec("primary", f"{__name__}:Broken"),)
    monkeypatch.setitem(registry.TASKS, "broken", TaskSpec("broken", "test double", chain))
    tenant_id = tenant(sqlite_db)
    job = submit(sqlite_db, tenant_id, ["doomed"], task="broken")
    none = metric("inferq_model_seconds_total", task="broken", tier="none")
    report = run(sqlite_db, sent)
    spent = metric("inferq_model_seconds_total", task="broken", tier="none") - none
    assert spent == pytest.approx(report.model_seconds)
    assert usage_of(sqlite_db, tenant_id, job.id) == Usage()


class FakeNvml:
    """NVML as nvidia-ml-py exposes it, for one GPU 37 % busy (or no driver)."""

    class NVMLError(Exception):
        pass

    def __init__(self, driver: bool = True) -> None:
        self.driver = driver

    def nvmlInit(self) -> None:
        if not self.driver:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=37, memory=5)


@pytest.fixture
def fresh_gpu_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(gpu, "_sampling", {})
    gpu._nvml.cache_clear()
    yield
    gpu._nvml.cache_clear()


def gpu_samples() -> list[Any]:
    return [s for metric in GPU_UTILISATION.collect() for s in metric.samples]


def samplers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == gpu.THREAD_NAME]


@pytest.mark.usefixtures("fresh_gpu_state")
@pytest.mark.parametrize("nvml", [None, FakeNvml(driver=False)], ids=["no-package", "no-driver"])
def test_without_a_gpu_the_sampler_stays_silent(
    nvml: FakeNvml | None, monkeypatch: pytest.MonkeyPatch, sqlite_db: Database
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", nvml)  # None: import raises ImportError
    assert gpu.start_sampling() is False
    run(sqlite_db, [])  # a worker's batch on this host starts nothing either
    assert samplers() == []
    assert gpu_samples() == []
    assert gpu.on_gpu("auto") is False
    assert gpu.on_gpu("cuda:0") is True


@pytest.mark.usefixtures("fresh_gpu_state")
def test_with_a_gpu_the_sampler_sets_its_utilisation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    gpu.sample_once(gpu.gpu_count())
    assert REGISTRY.get_sample_value("inferq_gpu_utilisation_ratio", {"gpu": "0"}) == 0.37
    assert gpu.on_gpu("auto") is True
    GPU_UTILISATION.remove("0")


# --- inferq usage's arithmetic --------------------------------------------------------------------


def test_cost_prices_cpu_and_gpu_seconds_at_their_worker_hour() -> None:
    settings = Settings(cost_per_worker_hour=0.36, cost_per_gpu_worker_hour=3.6)
    usage = Usage(inputs=1000, model_seconds=30.0, gpu_model_seconds=10.0)
    assert cost(usage, settings) == pytest.approx((20 * 0.36 + 10 * 3.6) / 3600)


def test_the_report_groups_by_tenant_and_task_with_cost_per_1000_predictions(
    db: Database, sent: list[Delivery]
) -> None:
    acme, other = tenant(db, "acme"), tenant(db, "zeta")
    for tenant_id, task in ((acme, "counted"), (acme, "falls-back"), (other, "counted")):
        submit(db, tenant_id, ["a", "b"], task)
    run(db, sent)
    with db.transaction() as session:  # known usage: 2 inputs and 7.2 CPU seconds per job
        session.execute(update(Job).values(usage_model_seconds=7.2, usage_gpu_seconds=0.0))
    settings = Settings(cost_per_worker_hour=0.5)

    with db.read() as session:
        rows = usage_report(session, settings)
        only_acme = usage_report(session, settings, tenant="acme")
        none_yet = usage_report(session, settings, since=utcnow() + timedelta(minutes=1))
    assert [(r.tenant, r.task, r.jobs, r.usage.inputs) for r in rows] == [
        ("acme", "counted", 1, 2),
        ("acme", "falls-back", 1, 2),
        ("zeta", "counted", 1, 2),
    ]
    assert rows[0].cost == pytest.approx(7.2 * 0.5 / 3600)
    assert rows[0].cost_per_1000 == pytest.approx(1000 * 7.2 * 0.5 / 3600 / 2)
    assert rows[0].cache_hit_rate == 0.0
    assert [r.tenant for r in only_acme] == ["acme", "acme"]
    assert none_yet == []
    totals = [r for r in with_tenant_totals(rows) if r.task == "*"]
    assert [(r.tenant, r.jobs, r.usage.inputs) for r in totals] == [("acme", 2, 4)]
    assert totals[0].cost == pytest.approx(2 * rows[0].cost)


def test_a_task_with_no_inputs_served_yet_has_no_rate_or_unit_cost() -> None:
    row = UsageRow("acme", "counted", 1, Usage(), 0.0)
    assert (row.cache_hit_rate, row.cost_per_1000) == (None, None)


def test_a_job_no_worker_has_run_yet_has_used_nothing(db: Database) -> None:
    tenant_id = tenant(db)
    job = submit(db, tenant_id, ["queued only"])
    with db.read() as session:
        stored = session.execute(select(Job.usage_inputs, Job.usage_model_seconds)).one()
    assert tuple(stored) == (0, 0.0)
    assert usage_of(db, tenant_id, job.id) == Usage()
