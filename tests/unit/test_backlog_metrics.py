"""The backlog collector on a real PostgreSQL: what it counts, how the finishing rate turns the
backlog into seconds, what it says when nothing finishes, and that a database it cannot reach
leaves /metrics answering."""

from __future__ import annotations

import math
from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from core.config import Settings
from core.db.models import Job, JobItem, Result, Tenant, WebhookDelivery, utcnow
from core.db.session import Database
from core.telemetry.backlog import BacklogCollector, FinishingRate, backlog_seconds
from tests.services import free_port

PRIORITIES = ("interactive", "bulk")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def collector(database: Database, clock: Clock, window: float = 60.0) -> BacklogCollector:
    return BacklogCollector(
        database,
        redis_url=None,
        queues=(),
        tasks=lambda: ["sentiment", "topic"],
        priorities=PRIORITIES,
        cache_seconds=5,
        rate_window_seconds=window,
        clock=clock,
    )


def samples(source: BacklogCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(source)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }


def of(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, task: str, priority: str
) -> float:
    return found[(name, (("priority", priority), ("task", task)))]


def add_job(
    database: Database,
    task: str,
    priority: str,
    statuses: list[str],
    *,
    age_seconds: float = 0.0,
    results: int = 0,
) -> None:
    """A job whose items have these statuses; `results` of the succeeded ones get result rows
    (as a worker finishing them writes)."""
    with database.transaction() as session:
        tenant = session.query(Tenant).filter_by(name="acme").one_or_none()
        if tenant is None:
            tenant = Tenant(name="acme")
            session.add(tenant)
            session.flush()
        pending = any(s in ("queued", "running") for s in statuses)
        job = Job(
            tenant_id=tenant.id,
            task=task,
            priority=priority,
            status="running" if pending else "succeeded",
            request_hash="h",
            total_items=len(statuses),
            created_at=utcnow() - timedelta(seconds=age_seconds),
        )
        session.add(job)
        session.flush()
        items = [
            JobItem(job_id=job.id, index=i, text=f"t{i}", input_hash=f"{i}", status=status)
            for i, status in enumerate(statuses)
        ]
        session.add_all(items)
        session.flush()
        done = [item for item in items if item.status == "succeeded"][:results]
        session.add_all(
            Result(
                item_id=item.id,
                job_id=job.id,
                task=task,
                input_hash=item.input_hash,
                model="m",
                version="1",
                tier="primary",
            )
            for item in done
        )


def test_backlog_counts_queued_and_running_items_per_task_and_priority(pg_db: Database) -> None:
    add_job(pg_db, "sentiment", "interactive", ["queued", "running", "succeeded"], age_seconds=90)
    add_job(pg_db, "sentiment", "interactive", ["queued"], age_seconds=10)
    add_job(pg_db, "topic", "bulk", ["queued"] * 4 + ["failed", "cancelled"], age_seconds=30)
    add_job(pg_db, "topic", "interactive", ["succeeded"], age_seconds=500)  # over: no backlog
    found = samples(collector(pg_db, Clock()))

    assert of(found, "inferq_backlog_items", "sentiment", "interactive") == 3
    assert of(found, "inferq_backlog_items", "topic", "bulk") == 4
    # Complete label sets: no backlog is a 0, not a missing series.
    assert of(found, "inferq_backlog_items", "topic", "interactive") == 0
    assert of(found, "inferq_backlog_items", "sentiment", "bulk") == 0
    assert 90 <= of(found, "inferq_oldest_pending_seconds", "sentiment", "interactive") < 120
    assert 30 <= of(found, "inferq_oldest_pending_seconds", "topic", "bulk") < 60
    assert of(found, "inferq_oldest_pending_seconds", "topic", "interactive") == 0
    assert found[("inferq_webhook_backlog", ())] == 0


def test_without_a_finishing_rate_backlog_seconds_is_the_oldest_items_age(
    pg_db: Database,
) -> None:
    add_job(pg_db, "sentiment", "bulk", ["queued"] * 10, age_seconds=200)
    clock = Clock()
    source = collector(pg_db, clock)
    first = samples(source)  # the first reading of a process has no rate yet
    clock.now += 10
    second = samples(source)  # nothing finished in between: rate 0
    for found in (first, second):
        drain = of(found, "inferq_backlog_seconds", "sentiment", "bulk")
        assert drain == of(found, "inferq_oldest_pending_seconds", "sentiment", "bulk") >= 200
        assert of(found, "inferq_backlog_seconds", "topic", "bulk") == 0


def test_backlog_seconds_is_the_backlog_over_the_items_finished_per_second(
    pg_db: Database,
) -> None:
    add_job(pg_db, "sentiment", "interactive", ["queued"] * 60, age_seconds=5)
    clock = Clock()
    source = collector(pg_db, clock)
    samples(source)
    # 40 items finish (results written) in the next 20 s: 2 items/s, so 60 items take 30 s.
    add_job(pg_db, "sentiment", "interactive", ["succeeded"] * 40, results=40)
    clock.now += 20
    found = samples(source)
    assert of(found, "inferq_backlog_seconds", "sentiment", "interactive") == 30
    # Cached for cache_seconds: more results do not move it until the next refresh.
    add_job(pg_db, "sentiment", "interactive", ["succeeded"] * 40, results=40)
    clock.now += 1
    assert samples(source) == found


def test_the_rate_is_an_ewma_weighted_by_the_time_each_sample_covers() -> None:
    rate = FinishingRate(window_seconds=60)
    key = ("sentiment", "bulk")
    rate.add({key: 100}, 10, [key])
    assert rate.get(key) == 10
    rate.add({}, 60, [key])  # a minute with nothing finished pulls it 1 - 1/e of the way to 0
    assert math.isclose(rate.get(key) or 0, 10 * math.exp(-1))
    assert rate.get(("topic", "bulk")) is None


def test_backlog_seconds_at_rate_zero_falls_back_to_the_age_and_is_zero_when_empty() -> None:
    assert backlog_seconds(0, None, 50.0) == 0
    assert backlog_seconds(0, 0.0, 50.0) == 0
    assert backlog_seconds(10, None, 50.0) == 50
    assert backlog_seconds(10, 0.0, 50.0) == 50
    assert backlog_seconds(10, 4.0, 50.0) == 2.5


def test_webhook_backlog_counts_deliveries_still_to_send(pg_db: Database) -> None:
    add_job(pg_db, "sentiment", "interactive", ["succeeded"])
    with pg_db.transaction() as session:
        tenant = session.query(Tenant).one()
        for n, status in enumerate(("pending", "failing", "delivered", "failed")):
            session.add(
                WebhookDelivery(
                    event_id=f"e{n}",
                    tenant_id=tenant.id,
                    event_type="job.completed",
                    url="https://example.com/hook",
                    status=status,
                )
            )
    assert samples(collector(pg_db, Clock()))[("inferq_webhook_backlog", ())] == 2


def test_metrics_answers_without_the_backlog_when_the_database_is_unreachable() -> None:
    settings = Settings(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone",
        broker_url="memory://localhost/",
        log_format="console",
        backlog_cache_seconds=0,
    )
    errors = 'inferq_backlog_read_errors_total{source="database"}'
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        before = _counter(client.get("/metrics").text, errors)
        response = client.get("/metrics")
    assert response.status_code == 200
    assert "inferq_backlog_items" not in response.text
    assert "inferq_backlog_seconds" not in response.text
    assert "inferq_jobs_submitted_total" in response.text, "the other families still answer"
    assert _counter(response.text, errors) == before + 1


def _counter(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0
