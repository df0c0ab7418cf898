"""`ner`, `langid` and `topic` through the two other doors a user has: a batch file
(POST /v1/batches) and Kafka (`inferq.requests` in, `inferq.results` out). One deployment serves
both: a tansu broker, PostgreSQL, Redis, and `inferq serve`, `inferq worker`, `inferq beat` and
`inferq ingest` as separate processes, the worker running the real models.
(HTTP jobs are in test_more_tasks.py.)

Offsets are code points into the text as sent: the non-ASCII texts put an emoji (two UTF-16 code
units, four UTF-8 bytes) and a typographic apostrophe before their entities, so offsets counted
in bytes or UTF-16 units would slice the wrong characters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from core.inference.langid import LinguaLangId
from core.inference.ner import SpacyEntities
from core.inference.topic import TopicTransformer
from tests.integration.conftest import Deployment, deployed
from tests.integration.test_batches import result_lines, upload, wait_until_over
from tests.integration.test_kafka_ingest import (
    REQUESTS,
    _request,
    _results_for,
    _start_ingest,
    broker,
    kafka_env,
)
from tests.kafka import Broker

pytestmark = pytest.mark.integration

__all__ = ["broker"]  # the tansu fixture, shared with test_kafka_ingest
REDIS_DB = 6  # this module's own

# Code point offsets differ from UTF-16 ones after the emoji, from UTF-8 ones after any of these.
ZOE = (
    "It\u2019s \U0001f642 Zo\u00eb M\u00fcller\u2019s idea: "
    "Angela Merkel met Emmanuel Macron in Paris on 3 May."
)
# Whitespace runs, a tab and a decomposed accent: the model reads the normalised text.
SPACED = "\U0001f389  Microsoft  said on Tuesday\tthat Rene\u0301e  Descartes visited Z\u00fcrich."
NO_NAMES = "no names at all here"
LANGUAGES = {
    "de": "Ich habe heute leider keine Zeit, weil ich arbeiten muss.",
    "fr": "Je voudrais une tasse de café, s'il vous plaît.",
    "ja": "今日はとても暑いですね。",
}
NEWS = {
    "sports": "The striker scored twice in the second half as the home side won the cup final.",
    "business": "Shares of the chip maker fell 8 percent after it cut its profit outlook.",
    "world": "The prime minister met the president in Berlin to discuss the ceasefire talks.",
}
MODEL_LOAD_SECONDS = 240.0  # the first job of a task may load its model in the worker


@pytest.fixture(scope="module")
def doors(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("doors"), REDIS_DB, **kafka_env(broker)) as running:
        _start_ingest(running.stack)
        yield running


def assert_offsets_hold(text: str, entities: list[dict[str, Any]]) -> dict[str, str]:
    """Every entity is its own slice of ``text``; returns text -> label."""
    assert entities, f"no entity in {text!r}"
    for entity in entities:
        assert text[entity["start"] : entity["end"]] == entity["text"], (text, entity)
    return {e["text"]: e["label"] for e in entities}


def assert_zoe_entities(entities: list[dict[str, Any]]) -> None:
    by_text = assert_offsets_hold(ZOE, entities)
    assert by_text["Angela Merkel"] == "PERSON" and by_text["Paris"] == "GPE"
    merkel = next(e for e in entities if e["text"] == "Angela Merkel")
    # Code points: 26. UTF-16 units would say 27 (the emoji), UTF-8 bytes 35.
    assert (merkel["start"], merkel["end"]) == (26, 39)
    assert any(e["text"].startswith("Zo\u00eb M\u00fcller") for e in entities), entities


def kafka_results(broker: Broker, ids: list[str]) -> dict[str, dict[str, Any]]:
    return _results_for(broker, ids, timeout=MODEL_LOAD_SECONDS)


def test_a_ner_batch_file_returns_entities_whose_offsets_hold_on_each_line_as_sent(
    doors: Deployment,
) -> None:
    lines = [
        {"id": "zoe", "text": ZOE},
        {"id": "spaced", "text": SPACED},
        {"id": "none", "text": NO_NAMES},
    ]
    with doors.client() as client:
        created = upload(client, lines, task="ner")
        assert created.status_code == 202, created.text
        done = wait_until_over(client, created.json()["id"], timeout=MODEL_LOAD_SECONDS)
        results = result_lines(client, done["id"])

    assert done["status"] == "completed", done
    assert done["request_counts"]["completed"] == 3 and done["request_counts"]["failed"] == 0
    assert [line["id"] for line in results] == ["zoe", "spaced", "none"]
    zoe, spaced, none = (line["result"] for line in results)
    assert_zoe_entities(zoe["entities"])
    by_text = assert_offsets_hold(SPACED, spaced["entities"])
    assert by_text["Microsoft"] == "ORG"
    assert by_text["Rene\u0301e  Descartes"] == "PERSON"  # the original form, spaces and all
    assert none["entities"] == []  # no entity found is an answer, kept as []
    assert (zoe["model"], zoe["version"], zoe["tier"]) == (
        "spacy-en_core_web_sm",
        SpacyEntities.current_version(),
        "primary",
    )
    assert "label" not in zoe and "scores" not in zoe


def test_ner_requests_on_kafka_get_result_records_with_entities_whose_offsets_hold(
    broker: Broker, doors: Deployment
) -> None:
    requests = [
        _request(ZOE, task="ner", metadata={"source": "kafka"}),
        _request(SPACED, task="ner"),
        _request(NO_NAMES, task="ner"),
    ]
    ids = [r["id"] for r in requests]

    broker.produce_json(REQUESTS, requests)
    results = kafka_results(broker, ids)

    zoe, spaced, none = (results[i] for i in ids)
    for record in (zoe, spaced, none):
        assert record["status"] == "succeeded" and record["task"] == "ner", record
        assert "error" not in record
    assert zoe["metadata"] == {"source": "kafka"}
    assert_zoe_entities(zoe["result"]["entities"])
    by_text = assert_offsets_hold(SPACED, spaced["result"]["entities"])
    assert by_text["Rene\u0301e  Descartes"] == "PERSON"
    assert none["result"]["entities"] == []
    assert zoe["result"]["model"] == "spacy-en_core_web_sm"
    assert zoe["result"]["version"] == SpacyEntities.current_version()


def test_langid_requests_on_kafka_get_result_records_naming_the_language(
    broker: Broker, doors: Deployment
) -> None:
    requests = [_request(text, task="langid") for text in LANGUAGES.values()]
    ids = [r["id"] for r in requests]

    broker.produce_json(REQUESTS, requests)
    results = kafka_results(broker, ids)

    for (language, text), message_id in zip(LANGUAGES.items(), ids, strict=True):
        record = results[message_id]
        assert record["status"] == "succeeded" and record["task"] == "langid", record
        result = record["result"]
        assert result["label"] == language, (text, result)
        assert (result["model"], result["tier"], result["degraded"]) == ("lingua", "primary", False)
        assert result["version"] == LinguaLangId.current_version()
        assert result["score"] == result["scores"][language]
        assert result["entities"] is None


def test_topic_through_a_batch_file_and_kafka_names_each_section(
    broker: Broker, doors: Deployment
) -> None:
    lines = [{"id": label, "text": text} for label, text in NEWS.items()]
    with doors.client() as client:
        created = upload(client, lines, task="topic")
        assert created.status_code == 202, created.text
        done = wait_until_over(client, created.json()["id"], timeout=MODEL_LOAD_SECONDS)
        batch = result_lines(client, done["id"])
    requests = [_request(text, task="topic") for text in NEWS.values()]
    broker.produce_json(REQUESTS, requests)
    records = kafka_results(broker, [r["id"] for r in requests])

    assert done["status"] == "completed", done
    assert [(line["id"], line["result"]["label"]) for line in batch] == [(k, k) for k in NEWS]
    for request, label in zip(requests, NEWS, strict=True):
        record = records[request["id"]]
        assert record["status"] == "succeeded" and record["task"] == "topic", record
        result = record["result"]
        assert result["label"] == label
        assert (result["model"], result["tier"]) == ("minilm-l6-agnews", "primary")
        assert result["version"] == TopicTransformer.current_version()
        assert set(result["scores"]) == {"world", "sports", "business", "sci_tech"}
        assert result["cached"] is True  # the batch already ran these texts: the cache answered


def test_a_langid_batch_file_names_each_language_and_reports_a_line_without_letters(
    doors: Deployment,
) -> None:
    lines = [{"id": code, "text": text} for code, text in LANGUAGES.items()]
    lines.append({"id": "digits", "text": "12345 !!! 678"})
    with doors.client() as client:
        created = upload(client, lines, task="langid")
        assert created.status_code == 202, created.text
        done = wait_until_over(client, created.json()["id"], timeout=MODEL_LOAD_SECONDS)
        results = result_lines(client, done["id"])

    assert done["status"] == "completed", done
    assert done["request_counts"]["completed"] == 3 and done["request_counts"]["failed"] == 1
    by_id = {line["id"]: line for line in results}
    for code in LANGUAGES:
        result = by_id[code]["result"]
        assert result["label"] == code and result["model"] == "lingua", result
        assert result["version"] == LinguaLangId.current_version()
    assert "LanguageUndetected" in by_id["digits"]["error"]["message"], by_id["digits"]
