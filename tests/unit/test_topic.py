"""The `topic` task's tiers and data, loaded for real: the AG News reader's repairs, the
character analyser, the numpy fallback against scikit-learn, the shipped artefacts' versions and
accuracy, and the registry's literal label lists against what the adapters serve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse  # type: ignore[import-untyped]

from core.inference.registry import LANGID_LABELS, NER_LABELS, TASKS, tier_version
from core.inference.topic import (
    DEFAULT_AGNEWS_DIR,
    TOPIC_ARTEFACT_DIR,
    TOPIC_LABELS,
    TOPIC_LIGHT_DIR,
    CharAnalyser,
    TfidfTopic,
    TopicLightRecipe,
    TopicTransformer,
    fit_light_topic,
    log_count_ratios,
    read_agnews,
    repair,
    save_light_topic,
    topic_light_version,
)

ROOT = Path(__file__).resolve().parents[2]
NEWS = [
    ("The striker scored twice as United won the cup final on Sunday.", "sports"),
    ("Shares of the chip maker fell 8 percent after a profit warning.", "business"),
    ("Rebels and the army agreed a ceasefire after talks in the capital.", "world"),
    ("The new browser release adds tabbed windows and a faster engine.", "sci_tech"),
]


def test_ag_news_entity_remains_are_repaired_and_labels_mapped() -> None:
    assert repair("It #39;s over, Microsoft #39;s way") == "It's over, Microsoft's way"
    assert repair("AT&amp;T &lt;b&gt;") == "AT&T <b>"
    rows = read_agnews(DEFAULT_AGNEWS_DIR / "test.tsv")
    assert len(rows) == 7600
    assert sorted({label for _, label in rows}) == [0, 1, 2, 3]
    assert not any("#39;" in text for text, _ in rows)


def test_a_malformed_line_names_its_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "train.tsv"
    bad.write_text("fine text\tSports\nno label here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.tsv:2"):
        read_agnews(bad)


def test_the_character_analyser_pads_each_word_and_reads_normalised_text() -> None:
    grams = CharAnalyser(2, 3)("Ab  c")
    assert grams == [" a", "ab", "b ", " ab", "ab ", " c", "c ", " c "]
    assert CharAnalyser(2, 3)("CAFE\u0301") == CharAnalyser(2, 3)("caf\u00e9")  # NFC, lower


def test_the_numpy_fallback_reproduces_scikit_learn(tmp_path: Path) -> None:
    rows = read_agnews(DEFAULT_AGNEWS_DIR / "train.tsv")[:800]
    recipe = TopicLightRecipe(max_word_features=3_000, max_char_features=3_000)
    fit = fit_light_topic(rows, recipe)
    assert not np.allclose(fit.scaling, 1.0)  # log-count ratios, not plain TF-IDF
    save_light_topic(fit, tmp_path)
    model = TfidfTopic.load(tmp_path)

    texts = [text for text, _ in read_agnews(DEFAULT_AGNEWS_DIR / "test.tsv")[:200]]
    texts += ["", "zzzz qqqq", "\u00e9t\u00e9 \U0001f600"]  # nothing known: intercepts only
    expected = fit.decision_function(fit.features(texts))
    ours = np.vstack([model.decisions(text) for text in texts])
    np.testing.assert_allclose(ours, expected, atol=1e-4)  # weights stored as float32
    # One-vs-rest probabilities: each label's sigmoid, normalised (scikit-learn's predict_proba).
    sigmoids = 1 / (1 + np.exp(-expected))
    probabilities = np.asarray([list(p.scores.values()) for p in model.predict(texts)])
    np.testing.assert_allclose(
        probabilities, sigmoids / sigmoids.sum(axis=1, keepdims=True), atol=1e-4
    )


def test_log_count_ratios_favour_the_terms_of_the_label() -> None:
    matrix = scipy.sparse.csr_matrix([[2.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
    ratios = log_count_ratios(matrix, np.array([True, True, False]))
    # p = (3, 0, 2) + 1, q = (0, 3, 1) + 1: the label's term up, the others' down, shared ~0.
    np.testing.assert_allclose(
        ratios, np.log((np.array([4, 1, 3]) / 8) / (np.array([1, 4, 2]) / 7))
    )
    assert ratios[0] > 0 > ratios[1]


def test_the_shipped_fallback_is_the_card_s_version_and_answers_the_obvious() -> None:
    model = TfidfTopic.load()
    card = json.loads((TOPIC_LIGHT_DIR / "card.json").read_text(encoding="utf-8"))
    assert model.version == card["version"] == topic_light_version(TOPIC_LIGHT_DIR)
    assert model.version == TfidfTopic.current_version() == tier_version("topic", "fallback")
    predictions = model.predict([text for text, _ in NEWS])
    assert [p.label for p in predictions] == [label for _, label in NEWS]
    assert all(abs(sum(p.scores.values()) - 1) < 1e-9 for p in predictions)


def test_the_shipped_primary_reaches_its_carded_accuracy_on_a_slice() -> None:
    """The whole test set is `inferq models evaluate topic`'s; 300 rows here keep this quick."""
    model = TopicTransformer.load()
    card = json.loads((TOPIC_ARTEFACT_DIR / "inferq_model.json").read_text(encoding="utf-8"))
    assert card["labels"] == list(TOPIC_LABELS) and card["task"] == "topic"
    assert model.version == TopicTransformer.current_version() == tier_version("topic", "primary")
    rows = read_agnews(DEFAULT_AGNEWS_DIR / "test.tsv")[:300]
    predictions = model.predict([text for text, _ in rows])
    gold = [TOPIC_LABELS[label] for _, label in rows]
    correct = sum(p.label == g for p, g in zip(predictions, gold, strict=True))
    assert correct / len(rows) >= card["test"]["accuracy"] - 0.05
    news = model.predict([text for text, _ in NEWS])
    assert [p.label for p in news] == [label for _, label in NEWS]


def test_a_sentiment_artefact_is_refused_as_a_topic_model() -> None:
    from core.inference.transformer import SENTIMENT_ARTEFACT_DIR

    with pytest.raises(RuntimeError, match="labels"):
        TopicTransformer.load(SENTIMENT_ARTEFACT_DIR)


def test_the_registry_s_label_lists_are_what_the_adapters_serve() -> None:
    from lingua import Language

    assert TASKS["topic"].labels == TOPIC_LABELS == TopicTransformer.LABELS
    assert TASKS["sentiment"].labels == ("negative", "positive")
    assert set(LANGID_LABELS) == {lang.iso_code_639_1.name.lower() for lang in Language.all()}
    assert TASKS["langid"].labels == LANGID_LABELS
    from core.inference.ner import SpacyEntities

    ner = SpacyEntities.load()
    assert set(NER_LABELS) == set(ner._nlp.get_pipe("ner").labels)


def test_evaluating_topic_from_the_cli_refuses_a_missing_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "models", "evaluate", "topic", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2 and "is not a file" in done.stderr
