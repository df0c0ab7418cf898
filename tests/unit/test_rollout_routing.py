"""Canary and shadow routing by input hash (pure unit tests: no database)."""

from __future__ import annotations

import hashlib

import pytest

from core.rollout.state import Rollout, RolloutCache, bucket


def hashes(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def test_a_canary_serves_about_its_share_of_inputs() -> None:
    rollout = Rollout("sentiment", 3, champion=None, canary="c1", canary_percent=10.0)
    served = [rollout.serves(h) for h in hashes(20_000)]
    share = served.count("c1") / len(served)
    assert 0.09 < share < 0.11
    assert set(served) == {"c1", None}


def test_an_input_meets_the_same_version_every_time() -> None:
    rollout = Rollout("sentiment", 3, champion="a", canary="c1", canary_percent=30.0)
    again = Rollout("sentiment", 4, champion="a", canary="c1", canary_percent=30.0)
    for digest in hashes(500):
        assert rollout.serves(digest) == again.serves(digest)


def test_a_larger_share_keeps_every_input_the_smaller_one_had() -> None:
    small = Rollout("sentiment", 1, canary="c1", canary_percent=10.0)
    large = Rollout("sentiment", 2, canary="c1", canary_percent=50.0)
    in_small = {h for h in hashes(5000) if small.serves(h) == "c1"}
    in_large = {h for h in hashes(5000) if large.serves(h) == "c1"}
    assert in_small < in_large


def test_another_canary_draws_an_independent_sample() -> None:
    first = Rollout("sentiment", 1, canary="c1", canary_percent=50.0)
    second = Rollout("sentiment", 2, canary="c2", canary_percent=50.0)
    both = sum(first.serves(h) == "c1" and second.serves(h) == "c2" for h in hashes(10_000))
    assert 0.22 < both / 10_000 < 0.28  # about 0.5 x 0.5, not 0.5 (same sample) or 0


def test_without_a_canary_the_champion_serves_everything() -> None:
    rollout = Rollout("sentiment", 2, champion="a")
    assert {rollout.serves(h) for h in hashes(1000)} == {"a"}
    assert not rollout.active


def test_route_groups_items_by_version_with_nothing_lost() -> None:
    rollout = Rollout("sentiment", 3, champion="a", canary="c1", canary_percent=25.0)
    items = hashes(1000)
    groups = rollout.route(items, str)
    assert set(groups) == {"a", "c1"}
    assert sorted(groups["a"] + groups["c1"]) == sorted(items)
    assert all(rollout.serves(h) == "c1" for h in groups["c1"])


def test_the_shadow_runs_on_its_share() -> None:
    rollout = Rollout("sentiment", 1, shadow="s", shadow_percent=20.0)
    share = sum(rollout.shadowed(h) for h in hashes(10_000)) / 10_000
    assert 0.18 < share < 0.22
    assert not any(Rollout("sentiment").shadowed(h) for h in hashes(100))


def test_buckets_are_uniform_over_0_to_100() -> None:
    values = [bucket("v", h) for h in hashes(10_000)]
    assert min(values) >= 0 and max(values) < 100
    deciles = [sum(10 * d <= v < 10 * (d + 1) for v in values) for d in range(10)]
    assert all(900 < n < 1100 for n in deciles)


def test_the_cache_reads_again_only_when_stale_and_keeps_the_last_view_on_error() -> None:
    cache = RolloutCache()
    reads: list[int] = []

    def load() -> Rollout:
        reads.append(1)
        if len(reads) > 1:
            raise ConnectionError("database down")
        return Rollout("sentiment", 7)

    assert cache.get("db", "sentiment", load, max_age=60).revision == 7
    assert cache.get("db", "sentiment", load, max_age=60).revision == 7
    assert len(reads) == 1  # fresh: no second read
    assert cache.get("db", "sentiment", load, max_age=0).revision == 7  # stale, read failed
    assert len(reads) == 2
    with pytest.raises(ConnectionError):  # nothing known yet: the error is not hidden
        cache.get("other-db", "sentiment", load, max_age=0)
