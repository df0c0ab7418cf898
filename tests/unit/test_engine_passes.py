"""How the engine cuts a batch into forward passes (``plan_passes``): every input once, within
the row and padded-token limits, at the least estimated work. Pure unit tests, no model."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence

import pytest

from core.config import BatchPolicy
from core.inference.engine import InferenceEngine, Output, plan_passes
from core.inference.types import Prediction
from tests.fakes import Healthy


def policy(rows: int = 64, budget: int = 4096, overhead: int = 64) -> BatchPolicy:
    return BatchPolicy(
        forward_max_items=rows, forward_token_budget=budget, forward_pass_overhead_tokens=overhead
    )


def work(lengths: Sequence[int], passes: list[list[int]], overhead: int) -> int:
    """Padded tokens (rows x longest) plus the overhead of each pass."""
    return sum(len(p) * max(lengths[i] for i in p) + overhead for p in passes)


def cheapest_work(lengths: Sequence[int], limits: BatchPolicy) -> int:
    """The oracle: every start of every pass tried (quadratic, fine for small inputs)."""
    ordered = sorted(lengths)
    best = [0] * (len(ordered) + 1)
    for end in range(1, len(ordered) + 1):
        width = ordered[end - 1]
        rows = max(1, min(limits.forward_max_items, limits.forward_token_budget // max(width, 1)))
        best[end] = limits.forward_pass_overhead_tokens + min(
            best[start] + (end - start) * width for start in range(max(0, end - rows), end)
        )
    return best[-1]


def random_lengths(rng: random.Random, n: int) -> list[int]:
    """Word-piece counts like the benchmark's phrases: many short, a long tail, many ties."""
    return [min(128, max(3, int(rng.lognormvariate(2.9, 0.5)))) for _ in range(n)]


def test_every_input_is_in_exactly_one_pass_shortest_first() -> None:
    lengths = random_lengths(random.Random(1), 500)
    passes = plan_passes(lengths, policy())

    flat = [i for p in passes for i in p]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)


def test_no_inputs_make_no_passes() -> None:
    assert plan_passes([], policy()) == []


def test_passes_respect_the_row_and_padded_token_limits() -> None:
    lengths = random_lengths(random.Random(2), 400)
    limits = policy(rows=16, budget=300)
    passes = plan_passes(lengths, limits)

    assert all(len(p) <= 16 for p in passes)
    assert all(len(p) * max(lengths[i] for i in p) <= 300 for p in passes if len(p) > 1)


def test_an_input_longer_than_the_token_budget_runs_alone() -> None:
    passes = plan_passes([5, 500, 5], policy(budget=100))

    assert passes == [[0, 2], [1]]


def test_passes_break_where_the_length_changes_not_at_a_fixed_row_count() -> None:
    # Fixed passes of four rows would pad a 10-token input to 50 tokens: [10, 10, 10, 50], [50, 50].
    passes = plan_passes([50, 10, 50, 10, 50, 10], policy(rows=4, overhead=8))

    assert passes == [[1, 3, 5], [0, 2, 4]]


def test_a_costly_pass_makes_short_inputs_share_one_wider_pass() -> None:
    lengths = [8, 9, 10, 11, 12, 13, 14, 15]

    assert len(plan_passes(lengths, policy(overhead=0))) == 8  # no padding at all
    assert plan_passes(lengths, policy(overhead=64)) == [list(range(8))]


@pytest.mark.parametrize("seed", range(40))
def test_the_cut_is_the_cheapest_under_the_limits(seed: int) -> None:
    rng = random.Random(seed)
    lengths = random_lengths(rng, rng.randint(1, 200))
    limits = policy(
        rows=rng.choice([1, 3, 8, 32, 64]),
        budget=rng.choice([16, 100, 512, 4096]),
        overhead=rng.choice([0, 16, 64, 200]),
    )
    passes = plan_passes(lengths, limits)

    assert work(lengths, passes, limits.forward_pass_overhead_tokens) == cheapest_work(
        lengths, limits
    )


class RecordsPasses(Healthy):
    """Counts one token per word and records the texts of each forward pass."""

    name = "records-passes"
    passes: list[list[str]] = []  # noqa: RUF012 - read by the test

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        type(self).passes.append(list(texts))
        return super().predict(texts)


def test_the_engine_runs_the_planned_passes_and_answers_in_input_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = f"passes-{uuid.uuid4().hex[:8]}"
    adapter = f"{__name__}:RecordsPasses"
    monkeypatch.setenv(
        "INFERQ_TASKS", json.dumps({task: {"chain": [{"tier": "primary", "adapter": adapter}]}})
    )
    rng = random.Random(3)
    texts = [
        ("good " if i % 3 else "bad ") + "word " * rng.randint(0, 12) + str(i) for i in range(60)
    ]
    limits = policy(rows=8, budget=64, overhead=4)
    RecordsPasses.passes.clear()

    outcomes = InferenceEngine(policies={"default": limits}).run(task, texts)

    lengths = [len(text.split()) for text in texts]
    assert RecordsPasses.passes == [[texts[i] for i in p] for p in plan_passes(lengths, limits)]
    assert [o.prediction.label for o in outcomes if isinstance(o, Output)] == [
        "positive" if i % 3 else "negative" for i in range(60)
    ]
