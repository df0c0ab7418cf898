"""The `ner` tier: spaCy's en_core_web_sm loaded for real, offsets into the input as sent, scoring,
and the shipped evaluation set."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.inference import ner
from core.inference.ner import (
    DEFAULT_NER_SET,
    NER_PACKAGE,
    SpacyEntities,
    evaluate_entities,
    ner_version,
    read_ner_set,
    scores,
)
from core.inference.ner_offsets import align
from core.inference.preprocess import normalise

ONTONOTES = {
    "PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW",
    "LANGUAGE", "DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL",
}  # fmt: skip

# Whitespace, emoji, non-ASCII and decomposed accents around and inside entities.
TRICKY = [
    "   Tim Cook visited Paris on Monday.   ",
    "\tTim Cook\tvisited\t\tParis on Monday.\n",
    "Tim    Cook visited   Paris on Monday.",
    "😀😀 Tim Cook visited Paris 🇫🇷 on Monday. 👍🏽",
    "Zoë Müller flew from Zürich to São Paulo on 3 March.",
    "Zoe\u0308 Mu\u0308ller flew from Zu\u0308rich to Sa\u0303o Paulo on 3 March.",
    "Tim\u00a0Cook visited\u2003Paris\u3000on Monday.",
    "Apple paid $3 billion\r\n\r\nfor Beats in May 2014.",
    "한국 Samsung opened a plant in Texas; Ångström Ltd. moved to Oslo.",
    "",
    "   \t\n  ",
]


@pytest.fixture(scope="module")
def adapter() -> SpacyEntities:
    return SpacyEntities.load()


@pytest.fixture(scope="module")
def dataset() -> list[tuple[str, list[tuple[int, int, str]]]]:
    return read_ner_set()


def assert_offsets_hold(text: str, entities: list[dict[str, object]]) -> None:
    for entity in entities:
        start, end = entity["start"], entity["end"]
        assert isinstance(start, int) and isinstance(end, int)
        assert 0 <= start < end <= len(text), entity
        assert entity["text"] == text[start:end], (text, entity)
        assert entity["label"] in ONTONOTES


@pytest.mark.parametrize("text", TRICKY)
def test_entity_text_is_the_input_slice_for_tricky_inputs(
    adapter: SpacyEntities, text: str
) -> None:
    [prediction] = adapter.predict([text])
    assert prediction.entities is not None
    assert_offsets_hold(text, prediction.entities)
    assert prediction.label is None and prediction.score is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("   Tim Cook visited Paris on Monday.   ", "Paris"),
        ("\tTim Cook\tvisited\t\tParis on Monday.\n", "Paris"),
        ("😀😀 Tim Cook visited Paris 🇫🇷 on Monday. 👍🏽", "Paris"),
        ("Tim\u00a0Cook visited\u2003Paris\u3000on Monday.", "Paris"),
        ("Zoe\u0308 Mu\u0308ller flew from Zu\u0308rich to Sa\u0303o Paulo.", "Zu\u0308rich"),
        ("Tim    Cook visited   Paris on Monday.", "Tim    Cook"),
    ],
)
def test_offsets_point_into_the_original_not_the_normalised_text(
    adapter: SpacyEntities, text: str, expected: str
) -> None:
    [prediction] = adapter.predict([text])
    found = {(e["start"], e["end"]) for e in prediction.entities or []}
    start = text.index(expected)
    assert (start, start + len(expected)) in found, prediction.entities


def test_one_prediction_per_input_in_order(adapter: SpacyEntities) -> None:
    texts = ["Paris is in France.", "", "no names here", "Berlin is in Germany.", "  "]
    predictions = adapter.predict(texts)
    assert len(predictions) == len(texts)
    assert [p.entities for p in predictions][1:3] == [[], []]
    assert predictions[0].entities and predictions[0].entities[0]["text"] == "Paris"
    assert predictions[3].entities and predictions[3].entities[0]["text"] == "Berlin"
    assert adapter.predict([]) == []


def test_batched_gives_the_same_entities_as_one_at_a_time(
    adapter: SpacyEntities, dataset: list[tuple[str, list[tuple[int, int, str]]]]
) -> None:
    texts = [text for text, _ in dataset] + TRICKY
    one_by_one = [adapter.predict([text])[0] for text in texts]
    assert adapter.predict(texts) == one_by_one
    small_batches = SpacyEntities(adapter._nlp, adapter.version, batch_size=5)
    assert small_batches.predict(texts) == one_by_one


def test_only_ner_is_loaded_and_it_finds_what_the_full_pipeline_finds(
    adapter: SpacyEntities, dataset: list[tuple[str, list[tuple[int, int, str]]]]
) -> None:
    import importlib

    assert adapter._nlp.pipe_names == ["ner"]
    full = importlib.import_module(NER_PACKAGE).load()
    assert "parser" in full.pipe_names
    texts = [normalise(text) for text, _ in dataset]
    spans = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in full.pipe(texts)]
    ours = [
        [(e.start_char, e.end_char, e.label_) for e in d.ents] for d in adapter._nlp.pipe(texts)
    ]
    assert ours == spans


def test_a_money_span_takes_in_the_currency_sign_before_it(adapter: SpacyEntities) -> None:
    text = "The kettle cost $129 and the toaster \u20ac45 at the shop in Leeds."
    (prediction,) = adapter.predict([text])
    money = [e for e in prediction.entities or [] if e["label"] == "MONEY"]
    assert money, prediction.entities
    for entity in money:
        assert entity["text"] == text[entity["start"] : entity["end"]]
        assert entity["text"][0] in "$\u20ac", entity
    raw = [e for e in next(iter(adapter._nlp.pipe([text]))).ents if e.label_ == "MONEY"]
    assert any(text[e.start_char - 1] in "$\u20ac" for e in raw)  # the model alone leaves it out


def test_version_is_stable_and_tracks_the_model_metadata(
    adapter: SpacyEntities, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", adapter.version)
    assert SpacyEntities.current_version() == ner_version() == adapter.version
    altered = tmp_path / "meta.json"
    original = ner._meta_path().read_bytes()
    # Same length, one label renamed: only the bytes themselves tell the two apart.
    altered.write_bytes(original.replace(b'"PERSON"', b'"PERSIN"'))
    assert len(altered.read_bytes()) == len(original) and altered.read_bytes() != original
    monkeypatch.setattr(ner, "_meta_path", lambda: altered)
    assert ner_version() != adapter.version


def test_version_and_import_need_no_spacy() -> None:
    code = (
        "import sys; from core.inference.ner import SpacyEntities as S; S.current_version(); "
        "assert 'spacy' not in sys.modules and 'thinc' not in sys.modules, 'spacy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# ------------------------------------------------------------------------ offset alignment


def test_alignment_rebuilds_normalise_and_maps_every_word_back() -> None:
    alphabet = [*"ab Z.\t\n\r\x0b\x0c\x1c\x85", "\u00a0", "\u2000", "\u2001", "\u3000", "\u0301",
                "\u0316", "\u0308", "e", "\u00e9", "\U0001f600", "\u200d", "\U0001f3fd", "\u1100",
                "\u1161", "\u11a8", "\uac00", "\u0bc6", "\u0bbe", "\u0958", "\u093c", "\u212b",
                "\u2126", "\ufb01", "\u0344", "\u0f73", "\u0345"]  # fmt: skip
    rng = random.Random(15)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        alignment = align(text)
        assert alignment.normalised == normalise(text)
        for word in re.finditer(r"\S+", alignment.normalised):
            start, end = alignment.original_span(word.start(), word.end())
            assert normalise(text[start:end]) == word.group(), (text, word)


def test_alignment_maps_a_collapsed_run_and_a_composed_letter() -> None:
    text = "  Zoe\u0308 \t New   York "
    alignment = align(text)
    assert alignment.normalised == "Zoë New York"
    assert alignment.original_span(0, 3) == (2, 6)  # "Zoë" came from four code points
    assert alignment.original_span(4, 12) == (9, 19)  # "New York" spans the triple space
    assert text[9:19] == "New   York"
    with pytest.raises(ValueError, match="outside"):
        alignment.original_span(5, 40)


# -------------------------------------------------------------------------------- scoring


def test_scores_on_a_hand_made_example() -> None:
    gold = [[(0, 5, "GPE"), (10, 18, "PERSON")], [(3, 7, "ORG")], []]
    predicted = [[(0, 5, "GPE"), (10, 18, "ORG")], [], [(0, 2, "DATE")]]
    evaluation = evaluate_entities(gold, predicted)
    # exact: 1 right of 3 predicted and 3 gold; span only: 2 of 3 either way.
    assert evaluation.exact == scores(1, 2, 2)
    assert evaluation.exact["precision"] == pytest.approx(1 / 3)
    assert evaluation.exact["recall"] == pytest.approx(1 / 3)
    assert evaluation.exact["f1"] == pytest.approx(1 / 3)
    assert evaluation.span["precision"] == pytest.approx(2 / 3)
    assert evaluation.span["f1"] == pytest.approx(2 / 3)
    assert evaluation.per_label["GPE"]["f1"] == 1.0
    assert evaluation.per_label["PERSON"] == scores(0, 0, 1)
    assert evaluation.per_label["ORG"] == scores(0, 1, 1)
    assert evaluation.per_label["DATE"]["precision"] == 0.0
    assert (evaluation.gold, evaluation.predicted) == (3, 3)


def test_scores_of_nothing_are_zero_not_an_error() -> None:
    assert scores(0, 0, 0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0,
                               "fn": 0}  # fmt: skip
    with pytest.raises(ValueError, match="gold documents"):
        evaluate_entities([[]], [])


def test_perfect_predictions_score_one(
    dataset: list[tuple[str, list[tuple[int, int, str]]]],
) -> None:
    gold = [spans for _, spans in dataset]
    assert evaluate_entities(gold, gold).exact["f1"] == 1.0


# -------------------------------------------------------------------------------- dataset


def test_every_span_of_the_evaluation_set_is_valid() -> None:
    lines = DEFAULT_NER_SET.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) >= 150
    assert len({row["text"] for row in rows}) == len(rows)
    assert any(not row["entities"] for row in rows)
    for row in rows:
        text, previous_end = row["text"], 0
        for entity in sorted(row["entities"], key=lambda e: e["start"]):
            span = text[entity["start"] : entity["end"]]
            assert span == entity["text"], (text, entity)
            assert span and span == span.strip(), (text, entity)
            assert entity["start"] >= previous_end, f"overlap in {text!r}"
            assert entity["label"] in ONTONOTES
            previous_end = entity["end"]


def test_shipped_labels_are_the_models_labels() -> None:
    labels = set(json.loads(ner._meta_path().read_text(encoding="utf-8"))["labels"]["ner"])
    assert labels == ONTONOTES
