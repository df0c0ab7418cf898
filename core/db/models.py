"""The relational model: PostgreSQL (or SQLite in embedded mode) is the system of record.

Unique keys carry the idempotency invariants: one result per item, one job per
(tenant, idempotency key), one submission per Kafka record (topic, partition, offset).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments INTEGER PRIMARY KEY, not BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # This tenant's own limits (`inferq tenants set-limits`); NULL: the settings' defaults.
    rate_limits: Mapped[str | None] = mapped_column(Text, default=None)
    max_pending_inputs: Mapped[int | None] = mapped_column(BigInteger, default=None)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # What the key may do: scope names separated by spaces (core.security.scopes).
    scopes: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEvent(Base):
    """Who changed what: keys, secrets, limits, cancellations (core.security.audit)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="SET NULL"), default=None
    )
    target: Mapped[str | None] = mapped_column(String(200), default=None)
    details: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class ModelRollout(Base):
    """What serves a task's primary tier now: its champion, a canary share, a shadow
    (core.rollout). No row: the shipped artefact serves alone."""

    __tablename__ = "model_rollouts"

    task: Mapped[str] = mapped_column(String(64), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)
    # None: the artefact shipped with the code (the registry's primary tier).
    champion: Mapped[str | None] = mapped_column(String(64), default=None)
    canary: Mapped[str | None] = mapped_column(String(64), default=None)
    canary_percent: Mapped[float] = mapped_column(Float, default=0.0)
    shadow: Mapped[str | None] = mapped_column(String(64), default=None)
    shadow_percent: Mapped[float] = mapped_column(Float, default=100.0)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    changed_by: Mapped[str] = mapped_column(String(200))


class ModelRolloutChange(Base):
    """Every rollout state a task has had, newest last: what `models rollback` walks back."""

    __tablename__ = "model_rollout_changes"
    __table_args__ = (Index("ix_model_rollout_changes_task", "task", "revision"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    champion: Mapped[str | None] = mapped_column(String(64), default=None)
    canary: Mapped[str | None] = mapped_column(String(64), default=None)
    canary_percent: Mapped[float] = mapped_column(Float, default=0.0)
    shadow: Mapped[str | None] = mapped_column(String(64), default=None)
    shadow_percent: Mapped[float] = mapped_column(Float, default=100.0)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))


class ModelRolloutStat(Base):
    """What each version did during one rollout revision, summed over all workers: items served
    (or shadowed), model seconds, confidence, and agreement of the shadow with the champion."""

    __tablename__ = "model_rollout_stats"

    task: Mapped[str] = mapped_column(String(64), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    items: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    scored: Mapped[int] = mapped_column(BigInteger, default=0)
    confidence_sum: Mapped[float] = mapped_column(Float, default=0.0)
    compared: Mapped[int] = mapped_column(BigInteger, default=0)
    agreed: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index(
            "ix_jobs_batch_seq",
            "batch_id",
            "batch_seq",
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
        # A tenant's work in flight, summed on every submit (core.security.quotas).
        Index(
            "ix_jobs_tenant_pending",
            "tenant_id",
            postgresql_include=["total_items"],
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[str] = mapped_column(String(16), default="interactive")
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", default=None)
    total_items: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # A batch's lines run as jobs of up to INFERQ_BATCH_JOB_SIZE items (see core.jobs.batches):
    # the batch, the job's place in it, and when its items were handed to the queue (NULL: not
    # yet; the batch dispatcher releases a few jobs per batch at a time, round robin).
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE", name="fk_jobs_batch"), default=None
    )
    batch_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    # What the job used (core.jobs.usage), added in the transactions that record its results:
    # inputs served, how many came from the cache, estimated tokens and model seconds of the
    # rest (the part on a GPU worker too: it costs more), and how many each tier served.
    usage_inputs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    usage_cached: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    usage_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    usage_model_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    usage_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    usage_primary: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    usage_fallback: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    usage_rules: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A job asking several tasks of each input ("tasks": [...]) is a parent with no items of
    # its own: `tasks` names them in order, and one child job per task (parent_id set) runs
    # exactly as a single-task job does. The parent ends when its last child ends.
    tasks: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), default=None)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE", name="fk_jobs_parent"), default=None, index=True
    )

    items: Mapped[list[JobItem]] = relationship(
        back_populates="job", order_by="JobItem.index", cascade="all, delete-orphan"
    )


class Batch(Base):
    """A bulk upload (OpenAI Batch API shape): its lines run as jobs of ``INFERQ_BATCH_JOB_SIZE``
    items that point back here. The counts are kept in the transactions that finish items, so
    reading them never scans a million lines."""

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_batches_tenant_idempotency_key"),
        Index("ix_batches_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_batches_status", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="validating")
    priority: Mapped[str] = mapped_column(String(16), default="bulk")
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    content_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", default=None)
    completion_window_seconds: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    completed: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    cancelled: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    in_progress_at: Mapped[datetime | None] = mapped_column(default=None)
    finalizing_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    failed_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    expired_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelling_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelled_at: Mapped[datetime | None] = mapped_column(default=None)
    # Round robin: the dispatcher tops up the batch served longest ago first.
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    # Nightly inbox batches: when the results files were written next to the input.
    output_written_at: Mapped[datetime | None] = mapped_column(default=None)
    # A batch asking several tasks of each line (``?task=a,b``) is a parent with no lines of its
    # own: `tasks` names them in order, and one child batch per task (parent_id set) runs exactly
    # as a single-task batch does. The parent ends when its last child ends.
    tasks: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), default=None)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE", name="fk_batches_parent"),
        default=None,
        index=True,
    )


class JobItem(Base):
    __tablename__ = "job_items"
    __table_args__ = (
        UniqueConstraint("job_id", "index", name="uq_job_items_job_index"),
        Index("ix_job_items_status_lease", "status", "leased_until"),
        Index("ix_job_items_status_dispatched", "status", "dispatched_at"),
        # A batch's lines in input order (results stream by keyset on line), and its ids
        # (duplicates within a batch are refused line by line).
        Index(
            "ix_job_items_batch_line",
            "batch_id",
            "line",
            unique=True,
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
        Index(
            "ix_job_items_batch_external_id",
            "batch_id",
            "external_id",
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    input_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    leased_until: Mapped[datetime | None] = mapped_column(default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Batch lines only: the batch (denormalised from the job for the two indexes above), the
    # line number in the uploaded file, the caller's id for it, and a machine-readable code for
    # a line refused at upload or ended by the batch (expired).
    batch_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    line: Mapped[int | None] = mapped_column(BigInteger, default=None)
    external_id: Mapped[str | None] = mapped_column(String(255), default=None)
    error_code: Mapped[str | None] = mapped_column(String(32), default=None)

    job: Mapped[Job] = relationship(back_populates="items")
    result: Mapped[Result | None] = relationship(back_populates="item", uselist=False)


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (Index("ix_results_cache_key", "task", "version", "input_hash"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(
        ForeignKey("job_items.id", ondelete="CASCADE"), unique=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(64))
    input_hash: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    tier: Mapped[str] = mapped_column(String(16))
    degraded: Mapped[bool] = mapped_column(Boolean, default=False)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    label: Mapped[str | None] = mapped_column(String(64), default=None)
    score: Mapped[float | None] = mapped_column(Float, default=None)
    output: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    item: Mapped[JobItem] = relationship(back_populates="result")


class OutboxMessage(Base):
    """A message to send once the transaction that wrote it has committed."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unsent", "sent_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)


class KafkaRecord(Base):
    """The Kafka record a job came from, written in the transaction that submitted the job.

    A redelivered record finds its row (same position, same message id) and is skipped; the
    job's idempotency key (the message id) catches the same message produced twice at two
    offsets. The message id is part of the key because a broker that lost its log hands out
    offsets again: a new request at a reused offset is not a redelivery."""

    __tablename__ = "kafka_records"
    __table_args__ = (
        UniqueConstraint(
            "topic", "partition", "offset", "message_id", name="uq_kafka_records_record"
        ),
        Index("ix_kafka_records_job", "job_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    topic: Mapped[str] = mapped_column(String(255))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookSecret(Base):
    """A tenant's Standard Webhooks signing secret, stored encrypted (AES-GCM, see
    core.webhooks.signing). The newest unretired one signs; one retired less than a day ago
    still signs too, so receivers can roll over after a rotation."""

    __tablename__ = "webhook_secrets"
    __table_args__ = (Index("ix_webhook_secrets_tenant", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDelivery(Base):
    """One webhook event and the state of its delivery: the outbox row written in the
    transaction that finished the job, and the truth for every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        UniqueConstraint("job_id", name="uq_webhook_deliveries_job"),
        UniqueConstraint("batch_id", name="uq_webhook_deliveries_batch"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)  # the webhook-id header
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), default=None
    )
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE", name="fk_webhook_deliveries_batch"),
        default=None,
    )
    event_type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # in the current series
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    # Set when a task message is sent; a message lost with Redis is sent again after a while.
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    # The attempt in flight: who holds it and until when (a dead worker's lease runs out).
    lease_token: Mapped[str | None] = mapped_column(String(32), default=None)
    leased_until: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
