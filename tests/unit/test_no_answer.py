"""Inputs a tier has no answer for (``NoAnswer``; `langid`'s ``LanguageUndetected``): they fail
with the tier's own words, never open its circuit breaker, and fail at once (no retry) when no
tier of the chain could answer them. The `langid` rules tier is the real one (pure Python); the
primary and fallback tiers are made unloadable, as in an image without Lingua or fastText."""

from __future__ import annotations

import json
import uuid

import pytest
from prometheus_client import REGISTRY

from core.config import BatchPolicy
from core.inference.circuit import CircuitPolicy, Circuits
from core.inference.engine import Failure, InferenceEngine, Output

RULES = {"tier": "rules", "adapter": "core.inference.langid_rules:ScriptLangId"}
DOWN = [
    {"tier": "primary", "adapter": "inferq_no_such_module:LinguaLangId"},
    {"tier": "fallback", "adapter": "inferq_no_such_module:FastTextLangId"},
]


def register(monkeypatch: pytest.MonkeyPatch, chain: list[dict[str, str]]) -> str:
    name = f"langid-{uuid.uuid4().hex[:8]}"  # process-wide breakers: one task per test
    monkeypatch.setenv("INFERQ_TASKS", json.dumps({name: {"chain": chain}}))
    return name


def engine(threshold: int = 2) -> InferenceEngine:
    return InferenceEngine(
        "cpu",
        circuits=Circuits(CircuitPolicy(threshold, 30.0, frozenset())),
        policies={"default": BatchPolicy(forward_max_items=8)},
    )


def test_latin_text_with_the_detectors_down_fails_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = register(monkeypatch, [*DOWN, RULES])
    (outcome,) = engine().run(name, ["Hello, how are you doing today?"])

    assert isinstance(outcome, Failure)
    assert outcome.reason.startswith("primary: unavailable (No module named 'inferq_no_such")
    assert "fallback: unavailable" in outcome.reason
    assert outcome.reason.endswith(
        "rules: LanguageUndetected: latin script names no single language"
    )
    assert not outcome.final  # the detectors may be back for the next attempt


def test_latin_batches_leave_the_rules_circuit_closed_for_other_scripts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = register(monkeypatch, [*DOWN, RULES])
    runner = engine(threshold=2)
    for _ in range(4):  # twice the threshold of batches in which the rules answered nothing
        assert isinstance(runner.run(name, ["Bonjour tout le monde"])[0], Failure)

    assert runner.circuits is not None and runner.circuits.state(name, "rules") == "closed"
    (korean,) = runner.run(name, ["안녕하세요, 잘 지내세요?"])
    assert isinstance(korean, Output) and (korean.prediction.label, korean.tier) == ("ko", "rules")
    assert korean.degraded
    assert (
        REGISTRY.get_sample_value(
            "inferq_fallbacks_total", {"task": name, "tier": "rules", "reason": "no_answer"}
        )
        == 4
    )


def test_a_tier_that_breaks_on_a_whole_batch_still_opens_its_circuit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = register(monkeypatch, [{"tier": "primary", "adapter": "tests.fakes:AlwaysFails"}])
    runner = engine(threshold=2)
    for _ in range(2):
        runner.run(name, ["text"])

    assert runner.circuits is not None and runner.circuits.state(name, "primary") == "open"


def test_an_input_no_tier_can_answer_fails_for_good_and_its_neighbours_succeed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = register(monkeypatch, [{**RULES, "tier": "primary"}])
    outcomes = engine().run(name, ["Привет, как дела?", "12345 !!!", "안녕하세요"])

    assert [o.prediction.label for o in outcomes if isinstance(o, Output)] == ["ru", "ko"]
    failure = outcomes[1]
    assert isinstance(failure, Failure) and failure.final
    assert failure.reason == "primary: LanguageUndetected: no letter in '12345 !!!'"
