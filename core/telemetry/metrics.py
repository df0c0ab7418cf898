"""Prometheus metrics shared by every process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_SUBMITTED = Counter(
    "inferq_jobs_submitted_total", "Jobs accepted, by task and door", ["task", "door"]
)
ITEMS_FINISHED = Counter(
    "inferq_items_finished_total",
    "Inputs finished, by task, tier and outcome",
    ["task", "tier", "outcome"],
)
BATCH_SECONDS = Histogram(
    "inferq_batch_seconds",
    "Time to run one batch through the fallback chain",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
BATCH_FLUSHES = Counter(
    "inferq_batch_flushes_total", "Micro-batches flushed to the model, by reason", ["reason"]
)
BATCH_ITEMS = Histogram(
    "inferq_batch_items", "Inputs per micro-batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
FALLBACKS = Counter(
    "inferq_fallbacks_total",
    "Inputs a tier did not serve, by task, tier and reason",
    ["task", "tier", "reason"],
)
CACHE_LOOKUPS = Counter(
    "inferq_cache_lookups_total", "Result cache lookups by level and outcome", ["level", "outcome"]
)
RELAYED = Counter("inferq_outbox_relayed_total", "Outbox messages sent to the broker")
SWEPT = Counter("inferq_swept_items_total", "Items re-driven or failed by the sweeper", ["action"])
WEBHOOK_ATTEMPTS = Counter(
    "inferq_webhook_attempts_total", "Webhook delivery attempts, by outcome", ["outcome"]
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "inferq_webhook_attempt_seconds",
    "Time a receiver took to answer one delivery attempt",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)

# Limits (core.security): requests refused per route class, fail-open storage errors, quota.
RATE_LIMITED = Counter(
    "inferq_rate_limited_total", "Requests refused with 429 by a rate limit", ["route_class"]
)
RATE_LIMITER_ERRORS = Counter(
    "inferq_rate_limiter_errors_total",
    "Rate limit checks skipped because the storage (Redis) could not be reached: failed open",
)
QUOTA_REFUSED = Counter(
    "inferq_quota_refused_total",
    "Submits (or batch windows, or Kafka records) refused: the tenant's pending inputs would "
    "pass its quota",
)
AUTH_FAILURES = Counter(
    "inferq_auth_failures_total", "Requests refused with 401 or 403, by reason", ["reason"]
)

# The Kafka door's backpressure (producers.kafka_quota): summed over live ingest processes.
KAFKA_PAUSED_PARTITIONS = Gauge(
    "inferq_kafka_paused_partitions",
    "Partitions of the requests topic paused because the kafka tenant's pending inputs reached "
    "its quota",
    multiprocess_mode="livesum",
)
