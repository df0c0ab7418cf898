"""What a worker does for rollouts after a batch's results have committed: count what each
version served, run the shadow on its share of the batch, and add both to the revision's stats.

The shadow runs off the result path: the users' results are already written (and their webhooks
and Kafka records on their way), so a shadow that fails or is slow never changes one; it costs
this worker time before its next batch, which ``shadow_percent`` bounds.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import structlog

from core.inference.engine import Outcome, Output
from core.jobs.lifecycle import Claim, ClaimedItem
from core.jobs.usage import ModelShare
from core.rollout import stats
from core.rollout.state import Rollout, current_in
from core.rollout.stats import VersionStats
from core.telemetry.metrics import MODEL_VERSION_ITEMS, SHADOW_COMPARISONS

if TYPE_CHECKING:
    from core.jobs.execute import Worker

log = structlog.get_logger(__name__)

Served = list[tuple[ClaimedItem, Output]]


def after_batch(
    worker: Worker,
    claims: Iterable[Claim],
    outcomes: Mapping[int, Outcome],
    shares: Mapping[int, ModelShare],
) -> None:
    """Never fails the batch: its results are committed, and these are statistics."""
    by_task: dict[str, Served] = defaultdict(list)
    for claim in claims:
        for item in claim.items:
            output = outcomes.get(item.id)
            if isinstance(output, Output) and output.tier == "primary":
                by_task[claim.task].append((item, output))
    for task, served in by_task.items():
        try:
            _after_task(worker, task, served, shares)
        except Exception as exc:  # a statistic lost, logged; the batch is done
            log.warning("rollout_bookkeeping_failed", task=task, error=repr(exc))


def _after_task(
    worker: Worker, task: str, served: Served, shares: Mapping[int, ModelShare]
) -> None:
    rollout = current_in(worker.database, task, max_age=worker.settings.rollout_refresh_seconds)
    deltas = _served_stats(rollout, served, shares)
    if rollout.shadow is not None:
        deltas.append(_shadow(worker, rollout, served))
    for delta in deltas:
        MODEL_VERSION_ITEMS.labels(task, delta.version, delta.role).inc(delta.items)
    if rollout.active and rollout.revision:
        with worker.database.transaction() as session:
            stats.add(session, task, rollout.revision, deltas)


def _served_stats(
    rollout: Rollout, served: Served, shares: Mapping[int, ModelShare]
) -> list[VersionStats]:
    by_version: dict[str, VersionStats] = {}
    for item, output in served:
        delta = by_version.get(output.version)
        if delta is None:
            role = "canary" if output.version == rollout.canary else "champion"
            delta = by_version[output.version] = VersionStats(output.version, role)
        delta.items += 1
        share = shares.get(item.id)
        delta.seconds += share.seconds if share is not None else 0.0  # cached: no model time
        if output.prediction.score is not None:
            delta.scored += 1
            delta.confidence_sum += output.prediction.score
    return list(by_version.values())


def _shadow(worker: Worker, rollout: Rollout, served: Served) -> VersionStats:
    """The shadow over the champion-served inputs of its share, compared label by label."""
    assert rollout.shadow is not None
    sample = [
        (item, output)
        for item, output in served
        if output.version != rollout.canary and rollout.shadowed(item.input_hash)
    ]
    delta = VersionStats(rollout.shadow, "shadow")
    if not sample:
        return delta
    started = time.perf_counter()
    try:
        predictions = worker.engine.predict_with(
            rollout.task, rollout.shadow, [item.text for item, _ in sample]
        )
    except Exception as exc:  # counted against the shadow; the champion's results stand
        log.warning("shadow_failed", task=rollout.task, version=rollout.shadow, error=repr(exc))
        delta.failed = len(sample)
        SHADOW_COMPARISONS.labels(rollout.task, rollout.shadow, "failed").inc(len(sample))
        return delta
    delta.seconds = time.perf_counter() - started
    delta.items = len(sample)
    for (_, output), prediction in zip(sample, predictions, strict=True):
        if prediction.score is not None:
            delta.scored += 1
            delta.confidence_sum += prediction.score
        if prediction.label is not None and output.prediction.label is not None:
            delta.compared += 1
            delta.agreed += prediction.label == output.prediction.label
    disagreed = delta.compared - delta.agreed
    SHADOW_COMPARISONS.labels(rollout.task, rollout.shadow, "agreed").inc(delta.agreed)
    SHADOW_COMPARISONS.labels(rollout.task, rollout.shadow, "disagreed").inc(disagreed)
    return delta
