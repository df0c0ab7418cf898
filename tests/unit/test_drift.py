"""Drift detection without services: the signal methods, the shipped reference profiles, the
in-process window, and GET /v1/models/{task}/drift and the drift gauges on the embedded app
(whose window lives in the process). Outputs come from the real light tier; nothing loads torch.

With Redis and real worker batches: tests/integration/test_drift.py.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from core.config import Settings
from core.db.session import Database
from core.inference.drift_profile import build_profile, held_out_split, write_profile
from core.inference.light import TfidfSentiment, light_artefact_version
from core.inference.transformer import SENTIMENT_ARTEFACT_DIR, artefact_version
from core.telemetry import drift

AG_NEWS_TSV = Path(__file__).resolve().parents[2] / "data" / "agnews" / "test.tsv"


def agnews(n: int) -> list[str]:
    with AG_NEWS_TSV.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row[0] for row, _ in zip(rows, range(n), strict=False)]


@pytest.fixture(scope="module")
def light() -> TfidfSentiment:
    return TfidfSentiment.load()


@pytest.fixture(autouse=True)
def _empty_memory_window() -> Iterator[None]:
    drift._MEMORY.clear()
    yield
    drift._MEMORY.clear()


def records_of(model: TfidfSentiment, texts: list[str]) -> list[dict[str, Any]]:
    return [
        drift.item_record(str(p.label), float(p.score or 0), text)
        for p, text in zip(model.predict(texts), texts, strict=True)
    ]


# --- methods -------------------------------------------------------------------------------------


def test_psi_is_zero_for_equal_shares_and_large_for_disjoint_bins() -> None:
    assert drift.psi([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0)
    assert drift.psi([50, 50, 0], [0, 0, 100]) > 5 * drift.PSI_THRESHOLD


def test_rank_auc_counts_ties_as_half() -> None:
    import numpy as np

    assert drift.rank_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert drift.rank_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert drift.rank_auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0


def test_in_domain_texts_asked_many_times_do_not_look_like_a_new_domain(
    light: TfidfSentiment,
) -> None:
    # Popular texts come back (cache hits): 20 texts 25 times each. A repeated text lands in one
    # fold (fold = hash of the text), so the classifier never scores a text it trained on; with
    # folds drawn per item it would recognise the repeats and score about 0.99.
    reference, _ = held_out_split()
    profile = build_profile(light, reference, task="sentiment")
    window = records_of(light, reference[:20] * 25)
    report = drift.detect("sentiment", profile, window, 500)
    embedding = next(s for s in report.signals if s.name == "embedding")
    assert embedding.score < drift.AUC_THRESHOLD


def test_news_text_is_told_apart_from_movie_reviews_by_every_input_signal(
    light: TfidfSentiment,
) -> None:
    reference, _ = held_out_split()
    profile = build_profile(light, reference, task="sentiment")
    report = drift.detect("sentiment", profile, records_of(light, agnews(240)), 500)
    flagged = {s.name for s in report.signals if s.drifted}
    assert {"length", "embedding"} <= flagged, report.signals
    assert report.drifted


def test_no_verdict_before_the_window_holds_min_items(light: TfidfSentiment) -> None:
    reference, _ = held_out_split()
    profile = build_profile(light, reference, task="sentiment")
    report = drift.detect("sentiment", profile, records_of(light, agnews(40)), 500)
    assert report.signals == []
    assert not report.drifted
    assert report.window == {"size": 40, "capacity": 500, "min_items": drift.MIN_ITEMS}


# --- the shipped profiles ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directory", "current_version"),
    [
        (SENTIMENT_ARTEFACT_DIR, artefact_version),
        (drift.PROFILE_DIRS["core.inference.light:TfidfSentiment"], light_artefact_version),
    ],
    ids=["primary", "light"],
)
def test_shipped_profile_describes_the_shipped_artefact(
    directory: Path, current_version: Any
) -> None:
    path = directory / drift.PROFILE_FILE
    assert path.stat().st_size < 200_000
    profile = json.loads(path.read_text(encoding="utf-8"))
    # Retraining without `inferq models profile sentiment` would leave a stale profile.
    assert profile["version"] == current_version(directory)
    assert profile["n"] == len(profile["embedding"]["sample"]) == sum(profile["labels"].values())


def test_writing_a_profile_leaves_the_artefact_version_unchanged(
    tmp_path: Path, light: TfidfSentiment
) -> None:
    for source, version_of in (
        (drift.PROFILE_DIRS["core.inference.light:TfidfSentiment"], light_artefact_version),
        (SENTIMENT_ARTEFACT_DIR, artefact_version),
    ):
        copy = shutil.copytree(
            source, tmp_path / source.name, ignore=shutil.ignore_patterns("drift*")
        )
        before = version_of(copy)
        profile = build_profile(light, ["a fine film ."] * 3, task="sentiment")
        write_profile(copy, profile)
        assert (copy / drift.PROFILE_FILE).is_file()
        assert version_of(copy) == before


# --- the window ----------------------------------------------------------------------------------


def test_window_keeps_the_newest_records_up_to_its_size() -> None:
    window = drift.DriftWindow(None, 3)
    window.push("sentiment", [{"i": 1}, {"i": 2}])
    window.push("sentiment", [{"i": 3}, {"i": 4}])
    assert [r["i"] for r in window.read("sentiment")] == [4, 3, 2]


# --- the API -------------------------------------------------------------------------------------


@pytest.fixture
def client(sqlite_db: Database) -> Iterator[TestClient]:
    settings = Settings(
        database_url=sqlite_db.url,
        broker_url="memory://localhost/",
        require_api_keys=False,
        log_format="console",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_drift_of_an_unknown_task_is_a_404_problem(client: TestClient) -> None:
    response = client.get("/v1/models/nope/drift")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "nope" in response.json()["detail"]


def test_drift_of_a_task_without_a_profile_is_a_404_naming_the_command(
    client: TestClient,
) -> None:
    response = client.get("/v1/models/embed/drift")
    assert response.status_code == 404
    assert "inferq models profile embed" in response.json()["detail"]


def test_drift_route_and_gauges_report_a_news_window_as_drifted(
    client: TestClient, light: TfidfSentiment
) -> None:
    drift.DriftWindow(None, 500).push("sentiment", records_of(light, agnews(500)))
    body = client.get("/v1/models/sentiment/drift").json()
    assert body["window"] == {"size": 500, "capacity": 500, "min_items": drift.MIN_ITEMS}
    assert body["reference"]["version"] == artefact_version(SENTIMENT_ARTEFACT_DIR)
    signals = {s["name"]: s for s in body["signals"]}
    assert set(signals) == {"label", "confidence", "length", "embedding"}
    assert signals["length"]["method"] == "psi"
    assert signals["length"]["drifted"] and body["drifted"]
    assert "checked_at" in body

    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    detected = {s.labels["task"]: s.value for s in families["inferq_drift_detected"].samples}
    assert detected == {"sentiment": 1.0}
    scores = {
        s.labels["signal"]: s.value
        for s in families["inferq_drift_score"].samples
        if s.labels["task"] == "sentiment"
    }
    assert scores["length"] == pytest.approx(signals["length"]["score"])
