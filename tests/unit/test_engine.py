"""The inference engine's batching and fallback chain. Pure unit tests: fake models from
tests/fakes.py and in-process circuit breakers; no database or broker is involved."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from core.config import BatchPolicy
from core.inference.circuit import CircuitPolicy, Circuits
from core.inference.engine import Failure, InferenceEngine, Output
from tests.fakes import NeedsSmallBatches


def chain(*adapters: tuple[str, str]) -> dict[str, object]:
    return {"chain": [{"tier": tier, "adapter": f"tests.fakes:{name}"} for tier, name in adapters]}


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> object:
    """Register fake tasks through INFERQ_TASKS, the way operators configure chains."""

    def register(**tasks: dict[str, object]) -> str:
        monkeypatch.setenv("INFERQ_TASKS", json.dumps(tasks))
        return next(iter(tasks))

    return register


def circuits(
    threshold: int = 5, recovery: float = 30.0, forced: frozenset = frozenset()
) -> Circuits:
    # A unique task name per test keeps the process-wide memory breakers apart.
    return Circuits(CircuitPolicy(threshold, recovery, forced))


def fallbacks(task: str, tier: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "inferq_fallbacks_total", {"task": task, "tier": tier, "reason": reason}
    )
    return value or 0.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_every_input_gets_one_outcome_in_order(task: object) -> None:
    name = task(**{unique("ok"): chain(("primary", "Healthy"))})  # type: ignore[operator]
    texts = ["good", "bad " * 30, "so good", "x", "a good long text " * 10]
    outcomes = InferenceEngine(policies={"default": BatchPolicy(forward_max_items=2)}).run(
        name, texts
    )

    assert [o.prediction.label for o in outcomes if isinstance(o, Output)] == [
        "positive",
        "negative",
        "positive",
        "negative",
        "positive",
    ]


def test_forward_passes_respect_their_row_and_token_limits(task: object) -> None:
    name = task(**{unique("budget"): chain(("primary", "NeedsSmallBatches"))})  # type: ignore[operator]
    NeedsSmallBatches.calls.clear()
    texts = ["short"] * 4 + ["a much longer input text " * 8] * 2
    policy = BatchPolicy(forward_max_items=2, forward_token_budget=60)
    InferenceEngine(policies={"default": policy}).run(name, texts)

    # ~52 estimated tokens each for the long texts: two of them would overflow 60 tokens.
    assert NeedsSmallBatches.calls == [2, 2, 1, 1]


def test_a_poison_input_fails_alone_and_its_neighbours_succeed(task: object) -> None:
    name = task(**{unique("poison"): chain(("primary", "PoisonSensitive"))})  # type: ignore[operator]
    texts = [f"good text {i}" for i in range(7)]
    texts[4] = "POISON pill"
    outcomes = InferenceEngine().run(name, texts)

    failed = [i for i, o in enumerate(outcomes) if isinstance(o, Failure)]
    assert failed == [4]
    assert "cannot process a poison input" in outcomes[4].reason  # type: ignore[union-attr]
    assert all(
        isinstance(o, Output) and o.tier == "primary" for i, o in enumerate(outcomes) if i != 4
    )


def test_a_failing_tier_falls_back_with_degraded_results_and_a_counted_reason(
    task: object,
) -> None:
    name = task(**{unique("flaky"): chain(("primary", "AlwaysFails"), ("fallback", "Healthy"))})  # type: ignore[operator]
    outcomes = InferenceEngine(circuits=circuits()).run(name, ["good", "bad"])

    assert all(isinstance(o, Output) and o.tier == "fallback" and o.degraded for o in outcomes)
    assert fallbacks(name, "primary", "exception") == 2


def test_a_tier_past_its_deadline_hands_the_rest_to_the_next_tier(
    task: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERQ_TEST_SLOW_SECONDS", "0.3")
    name = task(**{unique("slow"): chain(("primary", "Slow"), ("fallback", "Healthy"))})  # type: ignore[operator]
    policy = BatchPolicy(forward_max_items=1, deadline_seconds=0.1)
    outcomes = InferenceEngine(policies={"default": policy}).run(name, ["a", "b", "c"])

    tiers = [o.tier for o in outcomes if isinstance(o, Output)]
    assert tiers.count("primary") == 1  # the first batch started before the deadline
    assert tiers.count("fallback") == 2
    assert fallbacks(name, "primary", "deadline") == 2


def test_a_forced_open_tier_is_never_called(task: object) -> None:
    name = unique("forced")
    task(**{name: chain(("primary", "AlwaysFails"), ("fallback", "Healthy"))})  # type: ignore[operator]
    engine = InferenceEngine(circuits=circuits(forced=frozenset({(name, "primary")})))
    outcomes = engine.run(name, ["good"])

    assert outcomes[0].tier == "fallback"  # type: ignore[union-attr]
    assert fallbacks(name, "primary", "forced_open") == 1
    assert fallbacks(name, "primary", "exception") == 0  # never tried, so it never failed
    assert engine.circuits is not None and engine.circuits.state(name, "primary") == "forced-open"


def test_the_circuit_opens_after_the_threshold_and_probes_again_after_recovery(
    task: object,
) -> None:
    name = task(**{unique("breaker"): chain(("primary", "AlwaysFails"), ("fallback", "Healthy"))})  # type: ignore[operator]
    engine = InferenceEngine(circuits=circuits(threshold=2, recovery=0.3))
    for _ in range(2):
        engine.run(name, ["good"])
    assert engine.circuits is not None and engine.circuits.state(name, "primary") == "open"

    engine.run(name, ["good"])
    assert fallbacks(name, "primary", "circuit_open") == 1

    time.sleep(0.35)
    engine.run(name, ["good"])  # half-open: one probe, which fails and re-opens
    assert fallbacks(name, "primary", "exception") == 3
    assert engine.circuits.state(name, "primary") == "open"


def test_out_of_memory_halves_the_batch_instead_of_falling_back(task: object) -> None:
    name = task(**{unique("oom"): chain(("primary", "NeedsSmallBatches"), ("fallback", "Healthy"))})  # type: ignore[operator]
    NeedsSmallBatches.calls.clear()
    outcomes = InferenceEngine().run(name, [f"good {i}" for i in range(8)])

    assert all(isinstance(o, Output) and o.tier == "primary" and not o.degraded for o in outcomes)
    assert NeedsSmallBatches.calls[0] == 8 and max(NeedsSmallBatches.calls[1:]) <= 4


def test_when_every_tier_fails_each_input_fails_with_every_reason(task: object) -> None:
    name = task(**{unique("doomed"): chain(("primary", "AlwaysFails"), ("rules", "AlwaysFails"))})  # type: ignore[operator]
    outcomes = InferenceEngine().run(name, ["a", "b"])

    assert all(isinstance(o, Failure) for o in outcomes)
    assert "primary" in outcomes[0].reason and "rules" in outcomes[0].reason  # type: ignore[union-attr]
