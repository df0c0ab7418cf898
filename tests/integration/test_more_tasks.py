"""`ner`, `langid`, `topic` and a job of several tasks used as a user uses them: jobs over HTTP
against a real deployment (PostgreSQL, Redis, `inferq serve`, `inferq worker` and `inferq beat`
as separate processes), the worker running the real spaCy pipeline, the real Lingua detector and
the real topic model. Few jobs on purpose: Lingua takes about 20 s and 1.3 GB to load."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from core.inference.langid import LinguaLangId
from core.inference.ner import SpacyEntities
from core.inference.registry import all_tasks
from core.inference.topic import TfidfTopic, TopicTransformer
from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

# Runs of spaces, a tab and a decomposed accent (e + U+0301): the model reads the normalised
# text, the offsets must still point into this string as sent.
NER_TEXT = (
    "  Microsoft said on  Tuesday that it would buy\tActivision Blizzard. Rene\u0301e  Descartes"
)
LANGUAGES = {
    "en": "The weather is lovely today and we are going to the beach.",
    "de": "Ich habe heute leider keine Zeit, weil ich arbeiten muss.",
    "fr": "Je voudrais une tasse de café, s'il vous plaît.",
    "ru": "Я не знаю, где находится вокзал.",
    "ja": "今日はとても暑いですね。",
}
NO_LETTER = "12345 !!! 678"


def finished(client: httpx.Client, body: dict[str, Any], within: float = 240.0) -> dict[str, Any]:
    """Submit a job and long-poll it until it is over (the first job of a task loads its model)."""
    created = client.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    deadline = time.monotonic() + within
    while True:
        job: dict[str, Any] = client.get(created.headers["location"], params={"wait": 30}).json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job


def test_a_ner_job_returns_entities_whose_offsets_hold_on_the_input_and_repeats_from_cache(
    deployment: Deployment,
) -> None:
    with deployment.client() as client:
        first = finished(client, {"task": "ner", "inputs": [NER_TEXT, "no names at all here"]})
        again = finished(client, {"task": "ner", "inputs": [NER_TEXT]})

    assert first["status"] == "succeeded", first
    found, empty = first["results"]
    entities = found["entities"]
    assert all(NER_TEXT[e["start"] : e["end"]] == e["text"] for e in entities), entities
    by_text = {e["text"]: e["label"] for e in entities}
    assert by_text["Microsoft"] == "ORG" and by_text["Tuesday"] == "DATE"
    assert by_text["Rene\u0301e  Descartes"] == "PERSON"  # the original form, spaces and all
    assert empty["entities"] == []
    assert (found["model"], found["version"]) == (
        "spacy-en_core_web_sm",
        SpacyEntities.current_version(),
    )
    assert (found["tier"], found["degraded"], found["cached"]) == ("primary", False, False)
    assert found["label"] is None and found["scores"] is None

    assert again["status"] == "succeeded", again
    (cached,) = again["results"]
    assert cached["cached"] is True
    assert cached["entities"] == entities and cached["version"] == found["version"]


def test_a_langid_job_names_each_language_and_fails_a_text_without_letters_at_once(
    deployment: Deployment,
) -> None:
    with deployment.client() as client:
        job = finished(client, {"task": "langid", "inputs": [*LANGUAGES.values(), NO_LETTER]})

    assert job["status"] == "succeeded", job
    results = job["results"]
    assert [r["label"] for r in results] == list(LANGUAGES)
    for result in results:
        assert (result["model"], result["tier"], result["degraded"]) == ("lingua", "primary", False)
        assert result["version"] == LinguaLangId.current_version()
        assert 1 <= len(result["scores"]) <= 3
        assert (
            result["score"] == max(result["scores"].values()) == result["scores"][result["label"]]
        )
        assert result["entities"] is None
    (error,) = job["errors"]
    assert error["index"] == len(LANGUAGES) and error["status"] == "failed"
    # No tier could read a language from it: failed on the first attempt, saying why per tier.
    assert error["error"].startswith("primary: LanguageUndetected: no letter in"), error
    assert "rules: LanguageUndetected" in error["error"] and "gave up" not in error["error"]


def test_get_models_lists_the_new_chains_with_their_versions(deployment: Deployment) -> None:
    with deployment.client() as client:
        models = {m["task"]: m for m in client.get("/v1/models").json()["data"]}

    assert [(t["tier"], t["version"]) for t in models["ner"]["chain"]] == [
        ("primary", SpacyEntities.current_version())
    ]
    langid = models["langid"]["chain"]
    assert [t["tier"] for t in langid] == ["primary", "fallback", "rules"]
    assert all(t["version"] and t["circuit"] == "closed" for t in langid)


NEWS = {
    "sports": "The striker scored twice in the second half as the home side won the cup final.",
    "business": "Shares of the chip maker fell 8 percent after it cut its profit outlook.",
    "sci_tech": "The new smartphone chip uses a 3-nanometre process and a faster neural engine.",
    "world": "The prime minister met the president in Berlin to discuss the ceasefire talks.",
}


def test_a_topic_job_names_each_section_with_four_scores(deployment: Deployment) -> None:
    with deployment.client() as client:
        job = finished(client, {"task": "topic", "inputs": list(NEWS.values())})

    assert job["status"] == "succeeded", job
    assert [r["label"] for r in job["results"]] == list(NEWS)
    for result in job["results"]:
        assert (result["model"], result["tier"]) == ("minilm-l6-agnews", "primary")
        assert result["version"] == TopicTransformer.current_version()
        assert set(result["scores"]) == {"world", "sports", "business", "sci_tech"}
        assert abs(sum(result["scores"].values()) - 1.0) < 1e-6


def test_a_job_of_several_tasks_gets_one_result_per_task_per_input_from_each_tasks_worker(
    deployment: Deployment,
) -> None:
    inputs = [NEWS["world"], NER_TEXT, NO_LETTER]
    body = {"tasks": ["sentiment", "langid", "ner", "topic"], "inputs": inputs}
    with deployment.client() as client:
        job = finished(client, body)
        again = finished(client, {**body, "inputs": inputs[:2]})

    assert job["status"] == "succeeded", job
    assert job["tasks"] == body["tasks"] and job["counts"]["total"] == 12
    first, second, third = job["results"]
    assert set(first["tasks"]) == set(body["tasks"])
    assert first["tasks"]["langid"]["label"] == "en"
    assert first["tasks"]["topic"]["label"] == "world"
    assert first["tasks"]["sentiment"]["label"] in ("negative", "positive")
    entities = second["tasks"]["ner"]["entities"]
    assert {e["text"] for e in entities} >= {"Microsoft", "Activision Blizzard"}
    assert all(NER_TEXT[e["start"] : e["end"]] == e["text"] for e in entities)
    # The text without letters: langid has no answer; the other tasks answer it.
    assert set(third["tasks"]) == {"sentiment", "ner", "topic"}
    (error,) = job["errors"]
    assert (error["index"], error["task"], error["status"]) == (2, "langid", "failed")
    assert job["usage"]["inputs"] == 11

    assert again["status"] == "succeeded"  # answered by each task's cache at submit
    assert all(r["cached"] for item in again["results"] for r in item["tasks"].values())


def test_get_models_lists_every_task_with_its_labels_and_output_fields(
    deployment: Deployment,
) -> None:
    with deployment.client() as client:
        models = {m["task"]: m for m in client.get("/v1/models").json()["data"]}

    assert set(models) == set(all_tasks())
    assert models["topic"]["labels"] == list(TopicTransformer.LABELS)
    assert models["topic"]["outputs"] == ["label", "score", "scores"]
    assert [t["version"] for t in models["topic"]["chain"]] == [
        TopicTransformer.current_version(),
        TfidfTopic.current_version(),
    ]
    assert models["ner"]["outputs"] == ["entities"] and "PERSON" in models["ner"]["labels"]
    assert models["embed"]["outputs"] == ["embedding"] and models["embed"]["labels"] == []
    assert "de" in models["langid"]["labels"] and len(models["langid"]["labels"]) == 75
