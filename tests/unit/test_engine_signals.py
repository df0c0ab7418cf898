"""The engine's model signals, read back from prometheus_client's registry: the top score of what
each tier served, the time of each tier's call on a batch, the padding of the planned passes.
Real engine, fake tiers (here and in tests/fakes.py), unique task names so series never mix."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from core.config import BatchPolicy
from core.inference.circuit import CircuitPolicy, Circuits
from core.inference.engine import InferenceEngine, Output, padding_ratio, plan_passes
from core.inference.types import Prediction


class Scored:
    """Answers each text with the score it spells ("0.93" -> 0.93); counts no tokens."""

    name = "scored"
    version = "scored-1"

    @classmethod
    def load(cls, device: str = "cpu") -> Scored:
        return cls()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [Prediction(label="x", score=float(text.split()[0])) for text in texts]


class CountsWords(Scored):
    """A tier that tokenises, like the transformer tiers: one token a word."""

    name = "counts-words"

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(text.split()) for text in texts]


class Embeds(CountsWords):
    """Outputs without a score, like `embed`."""

    name = "embeds"

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [Prediction(embedding=[1.0, 0.0]) for _ in texts]


def register(monkeypatch: pytest.MonkeyPatch, *tiers: tuple[str, str]) -> str:
    task = f"signals-{uuid.uuid4().hex[:8]}"
    chain = [
        {"tier": tier, "adapter": name if ":" in name else f"{__name__}:{name}"}
        for tier, name in tiers
    ]
    monkeypatch.setenv("INFERQ_TASKS", json.dumps({task: {"chain": chain}}))
    return task


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def confidence_buckets(task: str, tier: str) -> dict[str, float | None]:
    bounds = ("0.5", "0.6", "0.7", "0.8", "0.9", "0.95", "0.99", "+Inf")
    return {
        le: sample("inferq_model_confidence_bucket", task=task, tier=tier, le=le) for le in bounds
    }


# --- confidence ---------------------------------------------------------------------------------


def test_each_served_output_s_top_score_lands_in_its_confidence_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = register(monkeypatch, ("primary", "Scored"))
    scores = ["0.42", "0.55", "0.93", "0.97", "0.999"]

    InferenceEngine().run(task, scores)

    assert confidence_buckets(task, "primary") == {
        "0.5": 1.0,
        "0.6": 2.0,
        "0.7": 2.0,
        "0.8": 2.0,
        "0.9": 2.0,
        "0.95": 3.0,
        "0.99": 4.0,
        "+Inf": 5.0,
    }
    total = sample("inferq_model_confidence_sum", task=task, tier="primary")
    assert total == pytest.approx(sum(float(s) for s in scores))


def test_confidence_is_counted_under_the_tier_that_served(monkeypatch: pytest.MonkeyPatch) -> None:
    task = register(monkeypatch, ("primary", "tests.fakes:AlwaysFails"), ("fallback", "Scored"))

    outcomes = InferenceEngine().run(task, ["0.65", "0.85"])

    assert all(isinstance(o, Output) and o.tier == "fallback" for o in outcomes)
    assert sample("inferq_model_confidence_count", task=task, tier="fallback") == 2.0
    assert sample("inferq_model_confidence_count", task=task, tier="primary") is None


def test_outputs_without_a_score_leave_no_confidence_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = register(monkeypatch, ("primary", "Embeds"))

    InferenceEngine().run(task, ["some text", "more text"])

    assert sample("inferq_model_confidence_count", task=task, tier="primary") is None
    assert sample("inferq_inference_seconds_count", task=task, tier="primary") == 1.0


# --- time per tier call -------------------------------------------------------------------------


def test_each_tier_call_on_a_batch_is_timed_once_whether_it_failed_or_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = register(monkeypatch, ("primary", "tests.fakes:AlwaysFails"), ("fallback", "Scored"))
    engine = InferenceEngine(policies={"default": BatchPolicy(forward_max_items=2)})

    engine.run(task, ["0.6", "0.7", "0.8", "0.9", "0.95"])  # 3 passes, every one split on failure
    engine.run(task, ["0.6"])

    for tier in ("primary", "fallback"):
        assert sample("inferq_inference_seconds_count", task=task, tier=tier) == 2.0
        seconds = sample("inferq_inference_seconds_sum", task=task, tier=tier)
        assert seconds is not None and seconds > 0


def test_a_tier_its_circuit_keeps_closed_off_is_not_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = register(monkeypatch, ("primary", "tests.fakes:AlwaysFails"), ("fallback", "Scored"))
    circuits = Circuits(CircuitPolicy(1, 30.0, frozenset({(task, "fallback")})))
    engine = InferenceEngine(circuits=circuits)

    engine.run(task, ["0.9"])  # the primary fails once: its circuit opens
    engine.run(task, ["0.9"])  # refused by the open circuit; the fallback is forced open

    assert sample("inferq_inference_seconds_count", task=task, tier="primary") == 1.0
    assert sample("inferq_inference_seconds_count", task=task, tier="fallback") is None


# --- padding ------------------------------------------------------------------------------------


def test_the_padding_of_a_batch_is_its_passes_padded_tokens_per_real_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = register(monkeypatch, ("primary", "CountsWords"))
    # Words (tokens) per text: 1, 1, 2, 4. A pass costs far more than padding: one pass of
    # 4 rows x 4 tokens = 16 padded tokens for 8 real ones.
    texts = ["0.9", "0.9", "0.9 a", "0.9 a b c"]
    policy = BatchPolicy(forward_max_items=64, forward_pass_overhead_tokens=1000)

    InferenceEngine(policies={"default": policy}).run(task, texts)

    assert sample("inferq_padding_ratio_count", task=task) == 1.0
    assert sample("inferq_padding_ratio_sum", task=task) == pytest.approx(2.0)
    assert sample("inferq_padding_ratio_bucket", task=task, le="1.5") == 0.0
    assert sample("inferq_padding_ratio_bucket", task=task, le="2.0") == 1.0


def test_padding_follows_the_plan_across_passes() -> None:
    lengths = [3, 9, 3, 8, 9, 3]
    policy = BatchPolicy(forward_max_items=3, forward_pass_overhead_tokens=100)
    passes = plan_passes(lengths, policy)
    assert passes == [[0, 2, 5], [3, 1, 4]]  # 3 rows x 3 and 3 rows x 9

    assert padding_ratio(lengths, passes) == pytest.approx((3 * 3 + 3 * 9) / sum(lengths))


def test_a_tier_that_counts_no_tokens_observes_no_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    task = register(monkeypatch, ("primary", "Scored"))

    InferenceEngine().run(task, ["0.9 long text", "0.8"])

    assert sample("inferq_padding_ratio_count", task=task) is None
