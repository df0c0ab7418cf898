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

# Cost and idle capacity (core.jobs.execute, core.telemetry.gpu). Model seconds are a batch's
# model wall time split over its inputs by estimated tokens, each share counted under the tier
# that served the input ("none": the input failed), so the tiers add up to the wall time.
MODEL_SECONDS = Counter(
    "inferq_model_seconds_total",
    "Model wall seconds, by task and the tier that served the inputs they were spent on",
    ["task", "tier"],
)
# utilisation = rate(inferq_worker_busy_seconds_total[5m]) / pool processes (see the README).
WORKER_BUSY_SECONDS = Counter(
    "inferq_worker_busy_seconds_total",
    "Seconds pool processes spent running batches (claim, cache, model, record)",
)
GPU_UTILISATION = Gauge(
    "inferq_gpu_utilisation_ratio",
    "Share of the last sample period the GPU was busy (NVML), only where a GPU is present",
    ["gpu"],
    multiprocess_mode="livemax",
)

# The backlog collector (core.telemetry.backlog): refreshes whose source could not be read, so
# the backlog families were left out of that scrape.
BACKLOG_READ_ERRORS = Counter(
    "inferq_backlog_read_errors_total",
    "Backlog refreshes that could not read their source (database or redis)",
    ["source"],
)

# Model signals (core.inference.engine): what each tier served, how long one tier's call on a
# batch took, and how much of a transformer batch was padding.
MODEL_CONFIDENCE = Histogram(
    "inferq_model_confidence",
    "Top score of each output a tier served (tasks whose outputs carry a score)",
    ["task", "tier"],
    buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
)
INFERENCE_SECONDS = Histogram(
    "inferq_inference_seconds",
    "Time one tier took over one batch (every forward pass and split), success or failure",
    ["task", "tier"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PADDING_RATIO = Histogram(
    "inferq_padding_ratio",
    "Padded tokens (rows x longest input, summed over the forward passes) per real token of one "
    "batch on a tier that counts tokens (the transformer tiers); 1 means no padding",
    ["task"],
    buckets=(1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0, 5.0),
)

# The Kafka door (producers.kafka_lag): records of each assigned partition not yet read.
KAFKA_CONSUMER_LAG = Gauge(
    "inferq_kafka_consumer_lag",
    "High watermark minus this consumer's position (its committed offset before it has one), "
    "per assigned partition of the requests topic",
    ["topic", "partition"],
    multiprocess_mode="livesum",
)

# The webhook sender (core.webhooks.send): deliveries by what an attempt left them in.
WEBHOOK_DELIVERIES = Counter(
    "inferq_webhook_deliveries_total",
    "Webhook delivery outcomes: delivered, retrying (an attempt failed, another is scheduled) "
    "or failed (gave up)",
    ["outcome"],
)
# Model rollouts (core.rollout): what each version served or shadowed, and how often a shadow
# agreed with the champion. inferq_rollout_agreement (a gauge per revision) is exported by the
# API from PostgreSQL (core.rollout.collector), summed over every worker.
MODEL_VERSION_ITEMS = Counter(
    "inferq_model_version_items_total",
    "Inputs a primary-tier version served (champion, canary) or shadowed, by task and version",
    ["task", "version", "role"],
)
SHADOW_COMPARISONS = Counter(
    "inferq_shadow_comparisons_total",
    "Shadow results compared with the champion's, by task, shadow version and outcome "
    "(agreed, disagreed, failed)",
    ["task", "version", "outcome"],
)
