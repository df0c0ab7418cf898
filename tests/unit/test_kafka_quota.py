"""When paused Kafka partitions may resume, and which quota the kafka tenant has."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from core.config import Settings
from core.db.models import Tenant
from core.db.session import Database
from producers.kafka_quota import kafka_limit, kafka_tenant, room_to_resume


@pytest.mark.parametrize(
    ("pending", "limit", "resume"),
    [
        (0, 5, True),
        (4, 5, True),  # 80 %: room
        (5, 5, False),  # full
        (9, 10, True),  # 90 % exactly
        (10, 10, False),
        (1_800_000, 2_000_000, True),
        (1_800_001, 2_000_000, False),  # under the quota, but not yet by the margin
        (0, 1, True),
        (1, 1, False),
        (7, 5, False),  # over it (the quota was lowered meanwhile)
    ],
)
def test_paused_partitions_resume_once_pending_inputs_are_back_to_90_percent_of_the_quota(
    pending: int, limit: int, resume: bool
) -> None:
    assert room_to_resume(pending, limit) is resume


def test_without_a_quota_paused_partitions_resume_whatever_is_pending() -> None:
    assert room_to_resume(10**9, None)


def test_the_kafka_tenants_own_quota_wins_over_the_setting() -> None:
    settings = Settings(max_pending_inputs_per_tenant=2_000_000)

    assert kafka_limit(50, settings) == 50
    assert kafka_limit(None, settings) == 2_000_000
    assert kafka_limit(None, Settings(max_pending_inputs_per_tenant=None)) is None


def test_each_batch_reads_the_kafka_tenants_own_quota_from_its_row(sqlite_db: Database) -> None:
    settings = Settings(max_pending_inputs_per_tenant=2_000_000)
    with sqlite_db.transaction() as session:
        tenant_id, limit = kafka_tenant(session, settings)  # made on first use
    assert limit == 2_000_000
    with sqlite_db.transaction() as session:
        session.execute(update(Tenant).values(max_pending_inputs=7))

    with sqlite_db.read() as session:
        assert kafka_tenant(session, settings) == (tenant_id, 7)
