"""`ner` and `langid` used as a user uses them: jobs over HTTP against a real deployment
(PostgreSQL, Redis, `inferq serve`, `inferq worker` and `inferq beat` as separate processes), the
worker running the real spaCy pipeline and the real Lingua detector. Few jobs on purpose: Lingua
takes about 20 s and 1.3 GB to load in the worker."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from core.inference.langid import LinguaLangId
from core.inference.ner import SpacyEntities
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
