"""The torch-free tiers of `sentiment`: the shipped TF-IDF model and VADER, loaded for real."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from core.inference.engine import ModelAdapter
from core.inference.evaluation import (
    DEFAULT_SST2_DIR,
    SENTIMENT_LABELS,
    evaluate_adapter,
    read_sst2,
    sentiment_prediction,
)
from core.inference.light import (
    ARTEFACT_FILES,
    CARD_FILE,
    DEFAULT_LIGHT_ARTEFACT_DIR,
    VOCABULARY_FILE,
    WEIGHTS_FILE,
    LightRecipe,
    TfidfSentiment,
    fit_light,
    light_artefact_version,
    save_light_artefact,
    train_light_sentiment,
)
from core.inference.preprocess import MAX_TOKENS
from core.inference.rules import VADER_LEXICONS, VADER_PACKAGE, VaderSentiment, vader_version

ADAPTERS = ("light", "vader")
OBVIOUS = [
    ("An absolute delight: moving, funny and brilliantly acted.", "positive"),
    ("I loved this wonderful film.", "positive"),
    ("A boring, painful mess.", "negative"),
    ("The worst, most tedious movie I have ever seen.", "negative"),
]
AWKWARD = [
    "",
    " \n\t\u00a0 ",
    "great " * 5_000,  # far past MAX_TOKENS
    "Cafe\u0301 \u2014 \U0001f600\U0001f525 \u0645\u0645\u062a\u0627\u0632 \u200b\x00 \ufffd",
    "A boring, painful mess.",
    "Terrible.",
    "Great!",
]


def load(kind: str) -> ModelAdapter:
    return TfidfSentiment.load() if kind == "light" else VaderSentiment.load()


@pytest.fixture(scope="module", params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> ModelAdapter:
    return load(str(request.param))


def small_sst2(tmp_path: Path, rows: int) -> Path:
    """A data dir with the first `rows` lines of SST-2 train: enough to train in well under 1 s."""
    data_dir = tmp_path / "sst2"
    data_dir.mkdir()
    lines = (DEFAULT_SST2_DIR / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (data_dir / "train.tsv").write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return data_dir


def test_the_label_set_is_the_transformer_tiers() -> None:
    from core.inference.transformer import SENTIMENT_LABELS as TRANSFORMER_LABELS

    assert SENTIMENT_LABELS == TRANSFORMER_LABELS


@pytest.mark.parametrize(("text", "expected"), OBVIOUS)
def test_obvious_sentiments_get_the_obvious_label(
    adapter: ModelAdapter, text: str, expected: str
) -> None:
    (prediction,) = adapter.predict([text])
    assert prediction.label == expected, f"{adapter.name} read {text!r} as {prediction}"


def test_one_prediction_per_input_in_input_order(adapter: ModelAdapter) -> None:
    together = adapter.predict(AWKWARD)
    alone = [adapter.predict([text])[0] for text in AWKWARD]
    assert together == alone


def test_scores_are_a_distribution_over_the_label_set(adapter: ModelAdapter) -> None:
    for prediction in adapter.predict(AWKWARD + [text for text, _ in OBVIOUS]):
        assert prediction.scores is not None and prediction.score is not None
        assert tuple(prediction.scores) == SENTIMENT_LABELS
        assert math.isclose(sum(prediction.scores.values()), 1.0, rel_tol=1e-12)
        assert prediction.label in SENTIMENT_LABELS
        assert prediction.score == prediction.scores[prediction.label] >= 0.5


def test_empty_input_gives_no_predictions(adapter: ModelAdapter) -> None:
    assert adapter.predict([]) == []


def test_predict_normalises_whitespace_itself(adapter: ModelAdapter) -> None:
    messy, clean = adapter.predict(["  a  moving\n\tfilm ", "a moving film"])
    assert messy == clean


def test_only_the_first_max_tokens_words_are_read(adapter: ModelAdapter) -> None:
    (prediction,) = adapter.predict(["wonderful " * MAX_TOKENS + "awful " * 1_000])
    assert prediction.label == "positive"


def test_a_tie_is_negative_with_half_the_mass_on_each_label() -> None:
    tie = sentiment_prediction(0.5)
    assert (tie.label, tie.score, tie.scores) == (
        "negative",
        0.5,
        {"negative": 0.5, "positive": 0.5},
    )


def test_vader_maps_compound_linearly_to_p_positive() -> None:
    vader = VaderSentiment.load()
    text = "A boring, painful mess."
    (prediction,) = vader.predict([text])
    assert prediction.scores is not None
    assert prediction.scores["positive"] == pytest.approx((vader.compound(text) + 1) / 2)


def test_versions_are_twelve_hex_and_stable_across_loads(adapter: ModelAdapter) -> None:
    again = load("light" if isinstance(adapter, TfidfSentiment) else "vader")
    assert again.version == adapter.version
    assert len(adapter.version) == 12
    int(adapter.version, 16)


def test_light_version_follows_the_artefact_bytes_not_its_location(tmp_path: Path) -> None:
    shipped = TfidfSentiment.load().version
    copy = tmp_path / "light"
    shutil.copytree(DEFAULT_LIGHT_ARTEFACT_DIR, copy)
    assert TfidfSentiment.load(copy).version == shipped
    with (copy / VOCABULARY_FILE).open("a", encoding="utf-8") as vocabulary:
        vocabulary.write("\n")
    assert TfidfSentiment.load(copy).version != shipped


def test_light_card_edits_leave_the_version_alone(tmp_path: Path) -> None:
    # The card is provenance (train time, accuracy); predictions do not depend on it.
    copy = tmp_path / "light"
    shutil.copytree(DEFAULT_LIGHT_ARTEFACT_DIR, copy)
    (copy / CARD_FILE).write_text("{}\n", encoding="utf-8")
    assert light_artefact_version(copy) == light_artefact_version(DEFAULT_LIGHT_ARTEFACT_DIR)


def test_vader_version_follows_the_lexicon_bytes(tmp_path: Path) -> None:
    package = resources.files(VADER_PACKAGE)
    for name in VADER_LEXICONS:
        (tmp_path / name).write_bytes(package.joinpath(name).read_bytes())
    assert VaderSentiment.load(tmp_path).version == vader_version()
    words = tmp_path / VADER_LEXICONS[0]
    # Prepended: the shipped file has no final newline, so an appended entry would merge into it.
    words.write_bytes(b"inferqish\t2.0\t0.5\t[2, 2, 2, 2, 2, 2, 2, 2, 2, 2]\n" + words.read_bytes())
    altered = VaderSentiment.load(tmp_path)
    assert altered.version != vader_version()
    assert altered.predict(["inferqish"])[0].label == "positive"  # and the copy is what it reads


def test_shipped_card_describes_the_shipped_artefact() -> None:
    card = json.loads((DEFAULT_LIGHT_ARTEFACT_DIR / CARD_FILE).read_text(encoding="utf-8"))
    assert card["version"] == TfidfSentiment.load().version
    size = sum((DEFAULT_LIGHT_ARTEFACT_DIR / name).stat().st_size for name in ARTEFACT_FILES)
    assert size < 5 * 2**20


def test_shipped_weights_are_plain_float_arrays() -> None:
    with np.load(DEFAULT_LIGHT_ARTEFACT_DIR / WEIGHTS_FILE, allow_pickle=False) as weights:
        assert sorted(weights.files) == ["coef", "idf", "intercept"]
        assert all(weights[name].dtype == np.float64 for name in weights.files)


def test_numpy_scorer_reproduces_scikit_learn(tmp_path: Path) -> None:
    rows = read_sst2(DEFAULT_SST2_DIR / "train.tsv")[:3_000]
    recipe = LightRecipe(min_df=1, max_features=5_000)
    vectorizer, classifier = fit_light([t for t, _ in rows], [y for _, y in rows], recipe)
    model = TfidfSentiment.load(save_light_artefact(vectorizer, classifier, recipe, tmp_path))

    texts: Sequence[str] = [t for t, _ in read_sst2(DEFAULT_SST2_DIR / "test.tsv")] + AWKWARD
    matrix = vectorizer.transform(texts)
    expected = classifier.predict_proba(matrix)[:, 1]
    ours = model.predict(texts)
    assert [p.scores["positive"] for p in ours if p.scores] == pytest.approx(expected, abs=1e-12)
    assert [p.label for p in ours] == [SENTIMENT_LABELS[y] for y in classifier.predict(matrix)]
    assert [model.decision(t) for t in texts] == pytest.approx(
        classifier.decision_function(matrix), abs=1e-12
    )


def test_retraining_reproduces_the_same_version(tmp_path: Path) -> None:
    data_dir = small_sst2(tmp_path, rows=2_000)
    first = train_light_sentiment(data_dir, tmp_path / "first")
    second = train_light_sentiment(data_dir, tmp_path / "second")
    assert light_artefact_version(first) == light_artefact_version(second)


def test_light_model_reaches_its_sst2_test_accuracy() -> None:
    report = evaluate_adapter(TfidfSentiment.load(), DEFAULT_SST2_DIR)
    assert report["n"] == 872
    assert report["accuracy"] >= 0.78


def test_vader_beats_chance_on_sst2_test() -> None:
    # A loose floor (it scores 0.666): enough to catch an inverted or constant mapping.
    assert evaluate_adapter(VaderSentiment.load(), DEFAULT_SST2_DIR)["accuracy"] >= 0.6


def test_loading_and_predicting_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a sentiment fallback tier tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for kind in ADAPTERS:
        load(kind).predict(["fine"])


def test_serving_the_fallback_tiers_imports_neither_torch_nor_sklearn() -> None:
    code = (
        "import sys, core.inference.light as light, core.inference.rules as rules; "
        "assert 'torch' not in sys.modules, 'importing imported torch'; "
        "light.TfidfSentiment.load().predict(['fine']); "
        "rules.VaderSentiment.load().predict(['ok']); "
        "leaked = {'torch', 'sklearn'} & set(sys.modules); assert not leaked, leaked"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
