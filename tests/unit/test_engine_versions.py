"""The engine serving trained versions beside the shipped chain: a named version replaces the
primary tier, at most `max_versions` stay loaded (least recently used evicted), a version this
machine lacks falls back. Real `logreg` versions (tests/versions.py) on the CPU; no services."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.inference.engine import Failure, InferenceEngine, Output
from core.inference.light import TfidfSentiment
from tests.versions import tiny_sst2, train_logreg

TEXTS = ["a charming and affecting journey", "bleak and desperate", "it is a movie"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A data dir with three trained versions of `sentiment`."""
    data_dir = tmp_path_factory.mktemp("store")
    sst2 = tiny_sst2(tmp_path_factory.mktemp("sst2"))
    trained = [train_logreg(data_dir, sst2, c).card["version"] for c in (0.5, 2.0, 8.0)]
    assert len(set(trained)) == 3
    return data_dir, trained


def engine_on(data_dir: Path, max_versions: int = 2) -> InferenceEngine:
    return InferenceEngine("cpu", data_dir=data_dir, max_versions=max_versions)


def test_a_named_version_serves_as_the_primary_tier(store: tuple[Path, list[str]]) -> None:
    data_dir, (first, *_) = store
    outcomes = engine_on(data_dir).run("sentiment", TEXTS, version=first)
    assert all(isinstance(o, Output) for o in outcomes)
    assert {(o.version, o.tier, o.degraded) for o in outcomes if isinstance(o, Output)} == {
        (first, "primary", False)
    }


def test_the_least_recently_used_version_is_evicted(store: tuple[Path, list[str]]) -> None:
    data_dir, (first, second, third) = store
    engine = engine_on(data_dir, max_versions=2)
    for version in (first, second, first, third):  # `first` used again: `second` is oldest
        engine.run("sentiment", TEXTS[:1], version=version)
    assert engine.loaded_versions() == [("sentiment", first), ("sentiment", third)]
    engine.run("sentiment", TEXTS[:1], version=second)  # loads again, evicts `first`
    assert engine.loaded_versions() == [("sentiment", third), ("sentiment", second)]


def test_retain_unloads_versions_a_rollout_no_longer_names(
    store: tuple[Path, list[str]],
) -> None:
    data_dir, (first, second, _) = store
    engine = engine_on(data_dir)
    engine.run("sentiment", TEXTS[:1], version=first)
    engine.run("sentiment", TEXTS[:1], version=second)
    engine.retain("sentiment", {second})
    assert engine.loaded_versions() == [("sentiment", second)]


def test_a_version_this_machine_lacks_falls_back_and_says_why(tmp_path: Path) -> None:
    outcomes = engine_on(tmp_path).run("sentiment", TEXTS, version="0123456789ab")
    served = [o for o in outcomes if isinstance(o, Output)]
    assert len(served) == len(TEXTS)  # the light tier served every input, marked degraded
    assert {(o.tier, o.degraded) for o in served} == {("fallback", True)}
    engine = engine_on(tmp_path)
    engine.run("sentiment", TEXTS[:1], version="0123456789ab")
    assert (
        "no trained sentiment version 0123456789ab"
        in engine.unavailable()["sentiment:primary@0123456789ab"]
    )


def test_predict_with_runs_the_version_alone(store: tuple[Path, list[str]]) -> None:
    data_dir, (_, second, _) = store
    engine = engine_on(data_dir)
    predictions = engine.predict_with("sentiment", second, TEXTS)
    direct = TfidfSentiment.load(data_dir / "models" / "sentiment-logreg" / second).predict(TEXTS)
    assert predictions == direct
    with pytest.raises(Exception, match="no trained sentiment version"):
        engine.predict_with("sentiment", "0123456789ab", TEXTS)


def test_no_version_and_the_shipped_version_both_run_the_registered_chain(
    store: tuple[Path, list[str]],
) -> None:
    data_dir, _ = store
    engine = engine_on(data_dir)
    shipped = engine.chain("sentiment", None)
    assert engine.chain("sentiment", engine.primary_version("sentiment")) == shipped
    assert engine.loaded_versions() == []
    outcome = engine.run("sentiment", TEXTS[:1])[0]
    assert not isinstance(outcome, Failure)
