"""Runs a task's fallback chain over a batch of texts: length-sorted forward passes cut for the
least padding and per-pass overhead (``plan_passes``), poison inputs isolated by splitting, and a
tier skipped on an exception, a per-batch deadline, an open circuit or a model that cannot load —
each skip counted with its reason.

Each batch a tier runs is measured: how long the tier took over it (``inferq_inference_seconds``,
success or failure), the top score of every output it served (``inferq_model_confidence``, for
tasks whose outputs carry one) and, on a tier that counts word pieces, how much of its planned
forward passes is padding (``inferq_padding_ratio``, see ``padding_ratio``).

One engine per worker process. Models are loaded lazily (or by ``warm_up`` in the worker's
process-init hook), never at import and never in a parent process that later forks. A tier whose
model cannot load in this process is remembered as down (see ``_Down``) and skipped without
another attempt, and reported to ``TierReports`` so that the API can say which tier is down.

A batch may name the version its primary tier must be (a rollout's champion or canary, see
``core.rollout``): a trained version is loaded from the model store beside the shipped chain, has
its own circuit breaker (a failing canary never opens the champion's), and at most
``max_versions`` of them stay loaded, the least recently used evicted.
"""

from __future__ import annotations

import bisect
import gc
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pybreaker
import structlog

from core.config import BatchPolicy
from core.inference import versions
from core.inference.availability import TierReports
from core.inference.circuit import Circuits
from core.inference.registry import TierSpec, adapter_class, get_task, tier_version
from core.inference.types import NoAnswer, Prediction
from core.telemetry.metrics import (
    FALLBACKS,
    INFERENCE_SECONDS,
    MODEL_CONFIDENCE,
    PADDING_RATIO,
)

log = structlog.get_logger(__name__)


class ModelAdapter(Protocol):
    name: str
    version: str

    def predict(self, texts: Sequence[str]) -> list[Prediction]: ...


@dataclass(frozen=True)
class Output:
    prediction: Prediction
    model: str
    version: str
    tier: str
    degraded: bool
    cached: bool = False


@dataclass(frozen=True)
class Failure:
    """An input every tier failed on; the reason says what each tier did. `final` when every
    tier of the chain ran and had no answer for it (``NoAnswer``): another attempt would only
    repeat that, while a tier that was down or broke may do better next time."""

    reason: str
    final: bool = False


Outcome = Output | Failure


class TierFailed(Exception):
    """A tier produced nothing for the inputs it was given (counted by the circuit breaker)."""


class TierUnavailable(Exception):
    """A tier's model cannot be loaded in this process; the chain moves on without it."""


# The adapter of a primary tier replaced by a trained version: "version:<hash>".
VERSIONED = "version:"

# How long a tier whose load failed for another reason than a missing module (an unreadable
# artefact, a CUDA error) waits before the next load, when no circuit policy says otherwise.
DEFAULT_LOAD_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class _Down:
    """A tier that failed to load in this process, and when (monotonic) to try loading it again.

    An ImportError is never retried: the packages of a running process do not change under it
    (fixing it means installing the `model` extra and restarting the worker), and importing again
    on every batch would only repeat the failure and its cost. Any other load error may be
    passing (a file being replaced, a device busy), so it is retried after a back-off — the
    circuit recovery time — and meanwhile the tier is skipped without a load.
    """

    error: str
    retry_at: float | None

    @classmethod
    def of(cls, exc: BaseException, retry_seconds: float) -> _Down:
        if isinstance(exc, ImportError):
            return cls(str(exc) or repr(exc), None)
        return cls(str(exc) or repr(exc), time.monotonic() + retry_seconds)

    def retry_due(self) -> bool:
        return self.retry_at is not None and time.monotonic() >= self.retry_at


@dataclass
class _Attempt:
    """What one tier did with the inputs it was given."""

    done: dict[int, Prediction] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # left for the next tier (deadline)
    unanswered: set[int] = field(default_factory=set)  # of `failed`: NoAnswer, the tier is fine

    def produced_nothing(self) -> bool:
        """Nothing served and something went wrong with the tier (not only inputs it had no
        answer for): what the circuit breaker counts as a failure."""
        faults = len(self.failed) - len(self.unanswered)
        return not self.done and (faults > 0 or bool(self.skipped))


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError, checked by name so this module never imports torch.
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class InferenceEngine:
    def __init__(
        self,
        device: str = "auto",
        *,
        circuits: Circuits | None = None,
        policies: dict[str, BatchPolicy] | None = None,
        reports: TierReports | None = None,
        load_retry_seconds: float | None = None,
        data_dir: Path = Path("var"),
        max_versions: int = 3,
    ) -> None:
        self.device = device
        self.data_dir = data_dir
        self.max_versions = max_versions
        self.circuits = circuits
        self.policies = policies or {}
        self.reports = reports
        if load_retry_seconds is None:
            load_retry_seconds = (
                circuits.policy.recovery_seconds if circuits else DEFAULT_LOAD_RETRY_SECONDS
            )
        self.load_retry_seconds = load_retry_seconds
        self._models: dict[tuple[str, str], ModelAdapter] = {}
        self._down: dict[tuple[str, str], _Down] = {}
        self._lock = threading.Lock()
        self._versioned: OrderedDict[tuple[str, str], None] = OrderedDict()  # LRU, oldest first

    def policy(self, task: str) -> BatchPolicy:
        return self.policies.get(task) or self.policies.get("default") or BatchPolicy()

    def model(self, task: str, tier: TierSpec) -> ModelAdapter:
        """The tier's loaded model; TierUnavailable when it cannot load in this process."""
        label = tier_label(tier)
        key = (task, label)
        with self._lock:
            if key in self._models:
                if key in self._versioned:
                    self._versioned.move_to_end(key)
                return self._models[key]
            was_down = self._down.get(key)
            if was_down is not None and not was_down.retry_due():
                raise TierUnavailable(was_down.error)
            try:
                model: ModelAdapter = self._load(task, tier)
            except Exception as exc:  # remembered, counted, logged and reported: never hidden
                down = self._down[key] = _Down.of(exc, self.load_retry_seconds)
                failure: Exception | None = exc
            else:
                self._models[key] = model
                self._down.pop(key, None)
                failure = None
                if tier.adapter.startswith(VERSIONED):
                    self._versioned[key] = None
                    self._evict_over(self.max_versions)
        if failure is not None:
            self._mark_down(task, label, down, failure)
            raise TierUnavailable(down.error) from failure
        if was_down is not None and self.reports is not None:
            self.reports.up(task, label)
        log.info(
            "model_loaded",
            task=task,
            tier=label,
            version=model.version,
            device=self.device,
            precision=getattr(model, "precision", None),
        )
        return model

    def _load(self, task: str, tier: TierSpec) -> ModelAdapter:
        if tier.adapter.startswith(VERSIONED):
            version = tier.adapter.removeprefix(VERSIONED)
            return versions.load(self.data_dir, task, version, self.device)
        loaded: ModelAdapter = adapter_class(tier).load(device=self.device)
        return loaded

    def chain(self, task: str, version: str | None = None) -> tuple[TierSpec, ...]:
        """The task's chain, its primary tier replaced by `version` when that is not the shipped
        artefact (None: the shipped chain as registered)."""
        registered = get_task(task).chain
        if version is None or version == versions.shipped_version(task):
            return registered
        return (TierSpec("primary", VERSIONED + version), *registered[1:])

    def loaded_versions(self) -> list[tuple[str, str]]:
        """The trained versions loaded in this process as (task, version), least recent first."""
        with self._lock:
            return [(task, label.split("@", 1)[1]) for task, label in self._versioned]

    def retain(self, task: str, keep: set[str]) -> None:
        """Unload the task's trained versions that are not in `keep` (a rollout ended)."""
        with self._lock:
            for key in [k for k in self._versioned if k[0] == task]:
                if key[1].split("@", 1)[1] not in keep:
                    self._unload(key)

    def _evict_over(self, limit: int) -> None:
        while len(self._versioned) > limit:
            self._unload(next(iter(self._versioned)))

    def _unload(self, key: tuple[str, str]) -> None:
        """Drop a trained version (lock held): its memory goes back once nothing refers to it."""
        self._versioned.pop(key, None)
        self._models.pop(key, None)
        self._down.pop(key, None)
        gc.collect()
        torch = sys.modules.get("torch")  # never imported here: only freed if a model used it
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        log.info("model_unloaded", task=key[0], tier=key[1])

    def _mark_down(self, task: str, tier: str, down: _Down, exc: Exception) -> None:
        log.error(
            "tier_unavailable",
            task=task,
            tier=tier,
            error=down.error,
            error_type=type(exc).__name__,
            retry_in_seconds=None if down.retry_at is None else self.load_retry_seconds,
        )
        if self.reports is not None:
            self.reports.down(task, tier, down.error)

    def unavailable(self) -> dict[str, str]:
        """The tiers this process cannot load, as "task:tier" -> error."""
        with self._lock:
            return {f"{task}:{tier}": down.error for (task, tier), down in self._down.items()}

    def primary(self, task: str) -> ModelAdapter:
        return self.model(task, get_task(task).chain[0])

    def primary_version(self, task: str) -> str | None:
        """The version results of the primary tier are cached under: from its files when the
        adapter can tell, else from the loaded model; None when neither is known (the primary
        cannot load here), and then the cache is not consulted."""
        tier = get_task(task).chain[0]
        try:
            version = tier_version(task, tier.tier)
        except (ImportError, OSError) as exc:  # e.g. the base model's package is not installed
            log.warning("tier_version_unknown", task=task, tier=tier.tier, error=str(exc))
            version = None
        if version is not None:
            return version
        try:
            return self.model(task, tier).version
        except TierUnavailable:
            return None

    def warm_up(self, tasks: Sequence[str]) -> dict[str, str]:
        """Load and exercise every tier of these tasks that can load; the ones that cannot are
        returned ("task:tier" -> error) and left to the rest of their chain."""
        for task in tasks:
            for tier in get_task(task).chain:
                try:
                    self.model(task, tier).predict(["warm up"])
                except TierUnavailable:
                    continue  # already logged as tier_unavailable
                except Exception as exc:  # loaded but failing: the circuit breaker takes it on
                    log.error("warm_up_failed", task=task, tier=tier.tier, error=repr(exc))
        return {
            name: error
            for name, error in self.unavailable().items()
            if name.split(":", 1)[0] in tasks
        }

    def run(self, task: str, texts: Sequence[str], *, version: str | None = None) -> list[Outcome]:
        """Exactly one outcome per text, in order; the primary tier is `version` when one is
        named (see ``chain``)."""
        outcomes: dict[int, Outcome] = {}
        pending = list(range(len(texts)))
        reasons: dict[int, list[str]] = {i: [] for i in pending}
        chain = self.chain(task, version)
        unanswered = dict.fromkeys(pending, 0)  # tiers that ran and had no answer, per input
        for position, tier in enumerate(chain):
            if not pending:
                break
            if self.circuits is not None and self.circuits.forced_open(task, tier.tier):
                self._fell_back(task, tier.tier, "forced_open", pending, reasons)
                continue
            # Loaded outside the circuit breaker: a tier this process cannot load says nothing
            # about the tier in the other workers that share the breaker's state.
            adapter = self._loaded(task, tier)
            if isinstance(adapter, TierUnavailable):
                self._fell_back(task, tier.tier, "unavailable", pending, reasons, detail=adapter)
                continue
            attempt = self._attempt(task, tier, adapter, texts, pending)
            if attempt is None:
                self._fell_back(task, tier.tier, "circuit_open", pending, reasons)
                continue
            self._serve(task, tier.tier, adapter, attempt, outcomes, degraded=position > 0)
            for index, error in attempt.failed.items():
                reasons[index].append(f"{tier.tier}: {error}")
                unanswered[index] += index in attempt.unanswered
            faults = [i for i in attempt.failed if i not in attempt.unanswered]
            self._fell_back(task, tier.tier, "exception", faults, reasons, note=False)
            self._fell_back(
                task, tier.tier, "no_answer", sorted(attempt.unanswered), reasons, note=False
            )
            self._fell_back(task, tier.tier, "deadline", attempt.skipped, reasons)
            pending = sorted([*attempt.failed, *attempt.skipped])
        for index in pending:
            reason = "; ".join(reasons[index]) or "no tier could run"
            outcomes[index] = Failure(reason, final=unanswered[index] == len(chain))
        assert len(outcomes) == len(texts), "one outcome per input"
        return [outcomes[i] for i in range(len(texts))]

    def _serve(
        self,
        task: str,
        tier: str,
        adapter: ModelAdapter,
        attempt: _Attempt,
        outcomes: dict[int, Outcome],
        *,
        degraded: bool,
    ) -> None:
        """The outputs of what this tier did, each top score observed on the way (one histogram
        child a batch, fetched only when an output has a score: embeddings leave no series)."""
        observe = None
        for index, prediction in attempt.done.items():
            outcomes[index] = Output(
                prediction, adapter.name, adapter.version, tier, degraded=degraded
            )
            if prediction.score is not None:
                observe = observe or MODEL_CONFIDENCE.labels(task, tier).observe
                observe(prediction.score)

    def _loaded(self, task: str, tier: TierSpec) -> ModelAdapter | TierUnavailable:
        try:
            return self.model(task, tier)
        except TierUnavailable as exc:
            if self.reports is not None:  # refreshed while batches keep skipping the tier
                self.reports.down(task, tier_label(tier), str(exc))
            return exc

    def predict_with(self, task: str, version: str, texts: Sequence[str]) -> list[Prediction]:
        """`version` alone over these texts, in planned passes: no chain, no breaker, no split.
        For a shadow run, whose failure only counts against the shadow (it raises)."""
        (tier, *_) = self.chain(task, version)
        adapter = self.model(task, tier)
        counted = _counted_tokens(adapter, list(texts))
        lengths = counted if counted is not None else _estimated_tokens(list(texts))
        predictions: dict[int, Prediction] = {}
        for rows in plan_passes(lengths, self.policy(task)):
            batch = adapter.predict([texts[i] for i in rows])
            if len(batch) != len(rows):
                raise RuntimeError(f"{len(batch)} results for {len(rows)} inputs")
            predictions.update(zip(rows, batch, strict=True))
        return [predictions[i] for i in range(len(texts))]

    def _fell_back(
        self,
        task: str,
        tier: str,
        reason: str,
        indices: Sequence[int],
        reasons: dict[int, list[str]],
        *,
        note: bool = True,
        detail: Exception | None = None,
    ) -> None:
        if not indices:
            return
        FALLBACKS.labels(task, tier, reason).inc(len(indices))
        if note:
            said = reason.replace("_", " ") + (f" ({detail})" if detail else "")
            for index in indices:
                reasons[index].append(f"{tier}: {said}")
        log.warning("tier_skipped", task=task, tier=tier, reason=reason, inputs=len(indices))

    def _attempt(
        self,
        task: str,
        tier: TierSpec,
        adapter: ModelAdapter,
        texts: Sequence[str],
        indices: list[int],
    ) -> _Attempt | None:
        """Run one tier through its circuit breaker, or None when the circuit is open. The breaker
        counts a failure only when the tier produced nothing (one poison input does not trip it),
        and an input the tier had no answer for is no failure of the tier: a batch of Latin text
        the `langid` rules cannot decide leaves their circuit closed for the scripts they can."""
        attempt = _Attempt()
        policy = self.policy(task)
        deadline = time.monotonic() + policy.deadline_seconds
        ran = False

        def run_tier() -> None:
            nonlocal ran
            ran = True
            started = time.perf_counter()
            try:
                for batch in self._batches(task, adapter, texts, indices, policy):
                    if time.monotonic() > deadline:
                        attempt.skipped.extend(batch)
                        continue
                    self._run_split(adapter, texts, batch, attempt)
                if attempt.produced_nothing():
                    raise TierFailed(f"{tier.tier} produced no result for {len(indices)} inputs")
            finally:
                INFERENCE_SECONDS.labels(task, tier.tier).observe(time.perf_counter() - started)

        try:
            if self.circuits is None:
                run_tier()
            else:
                self.circuits.breaker(task, tier_label(tier)).call(run_tier)
        except pybreaker.CircuitBreakerError:
            if not ran:
                return None
        except TierFailed:
            pass
        except Exception as exc:  # the tier broke outside a forward pass: every input moves on
            for index in indices:
                if index not in attempt.done:
                    attempt.failed.setdefault(index, repr(exc))
        return attempt

    def _batches(
        self,
        task: str,
        adapter: ModelAdapter,
        texts: Sequence[str],
        indices: list[int],
        policy: BatchPolicy,
    ) -> list[list[int]]:
        """The inputs ``indices`` as forward passes planned by ``plan_passes``; the plan's padding
        is observed when the tier counted the word pieces (an estimate says nothing of it)."""
        selected = [texts[i] for i in indices]
        counted = _counted_tokens(adapter, selected)
        lengths = counted if counted is not None else _estimated_tokens(selected)
        planned = plan_passes(lengths, policy)
        if counted:  # None for a tier that does not tokenise; never an empty batch
            PADDING_RATIO.labels(task).observe(padding_ratio(counted, planned))
        return [[indices[p] for p in passes] for passes in planned]

    def _run_split(
        self, adapter: ModelAdapter, texts: Sequence[str], batch: list[int], attempt: _Attempt
    ) -> None:
        """Predict a batch; on an error split it in halves until the failing input is alone."""
        try:
            predictions = adapter.predict([texts[i] for i in batch])
            if len(predictions) != len(batch):
                raise RuntimeError(f"{len(predictions)} results for {len(batch)} inputs")
        except Exception as exc:  # isolate the input that fails; its neighbours still succeed
            if len(batch) == 1:
                if isinstance(exc, NoAnswer):  # said plainly: "LanguageUndetected: no letter ..."
                    attempt.failed[batch[0]] = f"{type(exc).__name__}: {exc}"
                    attempt.unanswered.add(batch[0])
                else:
                    attempt.failed[batch[0]] = repr(exc)
                return
            if is_out_of_memory(exc):
                log.warning("out_of_memory_halving", batch=len(batch))
            middle = len(batch) // 2
            self._run_split(adapter, texts, batch[:middle], attempt)
            self._run_split(adapter, texts, batch[middle:], attempt)
            return
        attempt.done.update(zip(batch, predictions, strict=True))


def tier_label(tier: TierSpec) -> str:
    """A tier's name in breakers, reports and logs: "primary@<version>" for a trained version."""
    if tier.adapter.startswith(VERSIONED):
        return f"{tier.tier}@{tier.adapter.removeprefix(VERSIONED)}"
    return tier.tier


def _counted_tokens(adapter: ModelAdapter, texts: list[str]) -> list[int] | None:
    """Word pieces per text from a tier that tokenises (the transformer tiers), else None."""
    counter = getattr(adapter, "count_tokens", None)
    if callable(counter):
        return [int(n) for n in counter(texts)]
    return None


def _estimated_tokens(texts: list[str]) -> list[int]:
    # Tiers without a tokenizer: about four characters a token, plus [CLS] and [SEP].
    return [len(text) // 4 + 2 for text in texts]


def padding_ratio(lengths: Sequence[int], passes: Sequence[Sequence[int]]) -> float:
    """Padded tokens per real token of these planned passes: each pass pads its rows to its
    longest input (the last: ``plan_passes`` orders a pass shortest first), so 1.0 is no padding.

    It is the plan, which is what runs unless a pass fails and is split (its halves pad less),
    the deadline skips a pass, or the adapter cuts a pass of more than its own batch size (the
    defaults, 64 and 64, never do). One step per pass, not per input."""
    real = sum(lengths)
    if real <= 0:
        return 1.0
    return sum(len(rows) * lengths[rows[-1]] for rows in passes if rows) / real


def plan_passes(lengths: Sequence[int], policy: BatchPolicy) -> list[list[int]]:
    """Forward passes over inputs of these token lengths, as positions into ``lengths``: every
    position exactly once, shortest inputs first.

    Each pass is a run of the length-sorted inputs, at most ``forward_max_items`` rows and
    ``forward_token_budget`` padded tokens (rows x its longest input; an input longer than the
    budget runs alone). Among such cuts it takes the one with the least estimated work: padded
    tokens plus ``forward_pass_overhead_tokens`` per pass. Fixed-size passes cut through runs
    of equal lengths and pad the next pass to a longer input; this cut puts pass boundaries
    where the length changes, and makes passes of short inputs wider and of long ones narrower.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_lengths = [lengths[position] for position in order]
    starts = _cheapest_pass_starts(sorted_lengths, policy)
    passes: list[list[int]] = []
    end = len(order)
    while end > 0:
        passes.append(order[starts[end] : end])
        end = starts[end]
    return passes[::-1]


def _cheapest_pass_starts(lengths: list[int], policy: BatchPolicy) -> list[int]:
    """``starts[j]``: where the last pass begins in the cheapest cut of the first j of these
    ascending lengths (a pass ending at j pads every row to ``lengths[j - 1]``).

    An exact dynamic programme that tries only the starts an optimal cut needs. A start inside
    a run of equal lengths can move one input later, into the pass before, at no more work,
    unless that pass is full; so some optimal cut starts every pass where the length changes or
    one full pass after another such start. That leaves a few dozen candidates in a batch of
    512 (under 1 ms a batch on the 2-core VM, against 8 ms trying every start)."""
    overhead = policy.forward_pass_overhead_tokens
    cost = [0] * (len(lengths) + 1)
    starts = [0] * (len(lengths) + 1)
    candidates = [0]
    candidate_set = {0}
    for end in range(1, len(lengths) + 1):
        width = lengths[end - 1]
        rows = max(1, min(policy.forward_max_items, policy.forward_token_budget // max(width, 1)))
        reachable = candidates[bisect.bisect_left(candidates, end - rows) :]
        best_start, best = reachable[0], cost[reachable[0]] - reachable[0] * width
        for start in reachable[1:]:
            if cost[start] - start * width < best:
                best_start, best = start, cost[start] - start * width
        cost[end] = best + end * width + overhead
        starts[end] = best_start
        if end < len(lengths) and (lengths[end] != width or end - rows in candidate_set):
            candidates.append(end)
            candidate_set.add(end)
    return starts
