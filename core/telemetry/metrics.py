"""Prometheus metrics shared by every process."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
RELAYED = Counter("inferq_outbox_relayed_total", "Outbox messages sent to the broker")
SWEPT = Counter("inferq_swept_items_total", "Items re-driven or failed by the sweeper", ["action"])
