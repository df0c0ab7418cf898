"""`sentiment` light tier: TF-IDF over word 1-2 grams + logistic regression, trained on SST-2.

Serving needs numpy only. The artefact is plain data, never a pickle (unpickling runs code and
breaks across scikit-learn releases): the vocabulary as JSON, idf and the regression weights as an
.npz read with allow_pickle=False. `TfidfSentiment` recomputes from those arrays what
TfidfVectorizer followed by LogisticRegression computes; a test holds the two equal. The served
p(positive) is sigmoid(decision / T), T from the artefact's calibration.json
(`core.inference.calibration`). scikit-learn is imported inside the training functions only, and
torch never.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from core.inference.calibration import CALIBRATION_FILE, read_temperature
from core.inference.evaluation import (
    SENTIMENT_LABELS,
    evaluate_adapter,
    read_sst2,
    sentiment_prediction,
)
from core.inference.preprocess import MAX_TOKENS, PREPROCESS_VERSION, normalise
from core.inference.types import Prediction

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

LIGHT_MODEL_NAME = "tfidf-logreg-sst2"
DEFAULT_LIGHT_ARTEFACT_DIR = Path(__file__).resolve().parent / "artefacts" / "sentiment-light"
MODEL_FILE = "model.json"  # name, labels and the analyser settings the arrays were built with
VOCABULARY_FILE = "vocabulary.json"  # n-grams in column order, one per line so retrains diff well
WEIGHTS_FILE = "weights.npz"  # idf, coef, intercept
CARD_FILE = "card.json"  # provenance only: recipe, train time, test accuracy
# The files the decision depends on, hence the version (with calibration.json when there is one).
# The card stays out so that retraining on the same data with the same recipe reproduces the same
# version although its train time differs.
ARTEFACT_FILES = (MODEL_FILE, VOCABULARY_FILE, WEIGHTS_FILE)

# Bump when Analyser.__call__ changes: artefacts built by another analyser then refuse to load.
ANALYSER_VERSION = 1
# SST-2 is tokenised Penn Treebank style ("does n't", "ca n't"). The look-ahead splits raw
# "doesn't" / "can't" the same way, so negations in user text hit the n-grams learnt from SST-2.
# Unlike scikit-learn's default pattern it keeps one-letter tokens ("n't" would otherwise vanish).
TOKEN_PATTERN = r"(?u)\w+(?=n't)|n't|\b\w+\b"  # noqa: S105 (a regex, not a password)
# U+2019, the typographic apostrophe of pasted text; SST-2 only has the ASCII one.
_TYPOGRAPHIC_APOSTROPHE = "\u2019"


@dataclass(frozen=True)
class Analyser:
    """Text -> word n-grams: the one path for training (as TfidfVectorizer's analyzer) and serving.

    normalise(), lower-case (SST-2 is lower-case), first MAX_TOKENS tokens (the bound every tier
    shares; counted in words, not word pieces, so it never reads less text than the transformer),
    then 1..ngram_max grams joined by a space, as scikit-learn builds word n-grams.
    """

    token_pattern: str = TOKEN_PATTERN
    ngram_max: int = 2
    _token: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_token", re.compile(self.token_pattern))

    def __call__(self, text: str) -> list[str]:
        folded = normalise(text).lower().replace(_TYPOGRAPHIC_APOSTROPHE, "'")
        tokens = self._token.findall(folded)[:MAX_TOKENS]
        grams = list(tokens)
        for n in range(2, self.ngram_max + 1):
            grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        return grams


@dataclass(frozen=True)
class LightRecipe:
    """Hyper-parameters; recorded in the card.

    Tuned briefly on SST-2 dev. Dev holds phrases cut from the same reviews as train, so it rewards
    memorising (more n-grams, weaker regularisation) and flatters every setting (90-95 %); the
    spread between sensible settings there was about one point, so the smaller artefact won.
    """

    ngram_max: int = 2
    sublinear_tf: bool = True  # 1 + log(tf): a repeated word is evidence, not proportional proof
    min_df: int = 2  # an n-gram from a single phrase is that phrase's memory, not evidence
    max_features: int = 50_000  # the most frequent; keeps the committed artefact near 1.5 MB
    inverse_regularisation: float = 4.0  # LogisticRegression's C
    max_iter: int = 2_000


class TfidfSentiment:
    """`sentiment` fallback tier; loads in well under a second and needs no torch or sklearn."""

    name: str
    version: str

    def __init__(
        self,
        *,
        name: str,
        version: str,
        analyser: Analyser,
        vocabulary: Sequence[str],
        idf: npt.NDArray[np.float64],
        coef: npt.NDArray[np.float64],
        intercept: float,
        sublinear_tf: bool,
        temperature: float = 1.0,
    ) -> None:
        if not len(vocabulary) == idf.shape[0] == coef.shape[0]:
            raise ValueError(f"{len(vocabulary)} terms but {idf.shape} idf and {coef.shape} coef")
        self.name = name
        self.version = version
        self._analyser = analyser
        self._columns = {term: column for column, term in enumerate(vocabulary)}
        self._idf = idf
        self._coef = coef
        self._intercept = intercept
        self._sublinear_tf = sublinear_tf
        self.temperature = temperature

    @classmethod
    def load(
        cls, artefact_dir: Path | None = None, device: str = "cpu", *, calibrated: bool = True
    ) -> TfidfSentiment:
        """`device` is accepted for the adapter interface and ignored: this is a CPU dot product.
        `calibrated=False` serves T = 1 under the weights' own version (what calibration fits)."""
        directory = artefact_dir or DEFAULT_LIGHT_ARTEFACT_DIR
        model = _read_json(directory / MODEL_FILE)
        if model["analyser_version"] != ANALYSER_VERSION:
            raise RuntimeError(
                f"{directory} was built by analyser v{model['analyser_version']}, this code runs "
                f"v{ANALYSER_VERSION}; retrain it with train_light_sentiment()"
            )
        if tuple(model["labels"]) != SENTIMENT_LABELS:
            raise RuntimeError(f"{directory} has labels {model['labels']}, not {SENTIMENT_LABELS}")
        with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as weights:
            idf = weights["idf"].astype(np.float64)
            coef = weights["coef"].astype(np.float64)
            intercept = float(weights["intercept"].reshape(()))  # shape (1,), as sklearn's
        weights = light_weights_version(directory)
        return cls(
            name=str(model["name"]),
            version=light_artefact_version(directory) if calibrated else weights,
            analyser=Analyser(str(model["token_pattern"]), int(model["ngram_max"])),
            vocabulary=_read_json(directory / VOCABULARY_FILE),
            idf=idf,
            coef=coef,
            intercept=intercept,
            sublinear_tf=bool(model["sublinear_tf"]),
            temperature=read_temperature(directory, weights) if calibrated else 1.0,
        )

    def decision(self, text: str) -> float:
        """LogisticRegression.decision_function of TfidfVectorizer(norm='l2').transform([text])."""
        counts = Counter(
            column
            for gram in self._analyser(text)
            if (column := self._columns.get(gram)) is not None
        )
        if not counts:  # nothing known: the l2-normalised row is all zeros, only the bias is left
            return self._intercept
        columns = np.fromiter(counts.keys(), dtype=np.intp, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        if self._sublinear_tf:
            tf = 1.0 + np.log(tf)
        weights = tf * self._idf[columns]
        dot = float(weights @ self._coef[columns])
        return dot / float(np.linalg.norm(weights)) + self._intercept

    @classmethod
    def current_version(cls) -> str:
        return light_artefact_version(DEFAULT_LIGHT_ARTEFACT_DIR)

    def logits(self, texts: Sequence[str]) -> list[list[float]]:
        """(0, decision) per text: softmax of it is sigmoid(decision), the regression's p."""
        return [[0.0, self.decision(text)] for text in texts]

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [
            sentiment_prediction(_sigmoid(self.decision(text) / self.temperature)) for text in texts
        ]


def light_weights_version(artefact_dir: Path) -> str:
    """12 hex of sha256 over the decision's files' names, sizes and bytes, and PREPROCESS_VERSION:
    the model before calibration, what calibration.json is fitted for."""
    return _digest(artefact_dir, ARTEFACT_FILES)


def light_artefact_version(artefact_dir: Path) -> str:
    """The served version: as light_weights_version, with calibration.json when there is one
    (a new temperature serves other scores, so other cached results)."""
    if not (artefact_dir / CALIBRATION_FILE).is_file():
        return light_weights_version(artefact_dir)
    return _digest(artefact_dir, (*ARTEFACT_FILES, CALIBRATION_FILE))


def _digest(artefact_dir: Path, names: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        data = (artefact_dir / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    digest.update(f"{PREPROCESS_VERSION}\0".encode())
    return digest.hexdigest()[:12]


def fit_light(
    texts: Iterable[str], labels: Sequence[int], recipe: LightRecipe, *, seed: int = 13
) -> tuple[TfidfVectorizer, LogisticRegression]:
    """The fitted scikit-learn pair; save_light_artefact() turns it into plain arrays.

    `texts` may be a generator: TfidfVectorizer counts them in one pass."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(
        analyzer=Analyser(TOKEN_PATTERN, recipe.ngram_max),
        sublinear_tf=recipe.sublinear_tf,
        min_df=recipe.min_df,
        max_features=recipe.max_features,
        dtype=np.float64,
    )
    matrix = vectorizer.fit_transform(texts)
    # lbfgs is deterministic; the seed is passed anyway so that a stochastic solver would be too.
    classifier = LogisticRegression(
        C=recipe.inverse_regularisation, max_iter=recipe.max_iter, random_state=seed
    )
    classifier.fit(matrix, np.asarray(labels))
    return vectorizer, classifier


def save_light_artefact(
    vectorizer: TfidfVectorizer, classifier: LogisticRegression, recipe: LightRecipe, out_dir: Path
) -> Path:
    if list(classifier.classes_) != [0, 1]:
        raise ValueError(f"expected SST-2 classes [0, 1], got {list(classifier.classes_)}")
    analyser: Analyser = vectorizer.analyzer
    out_dir.mkdir(parents=True, exist_ok=True)
    model = {
        "name": LIGHT_MODEL_NAME,
        "labels": list(SENTIMENT_LABELS),
        "analyser_version": ANALYSER_VERSION,
        "token_pattern": analyser.token_pattern,
        "ngram_max": analyser.ngram_max,
        "sublinear_tf": recipe.sublinear_tf,
    }
    _write_json(out_dir / MODEL_FILE, model)
    terms = [str(term) for term in vectorizer.get_feature_names_out()]
    (out_dir / VOCABULARY_FILE).write_text(
        json.dumps(terms, indent=0, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    _write_npz(
        out_dir / WEIGHTS_FILE,
        {
            "idf": np.asarray(vectorizer.idf_, dtype=np.float64),
            "coef": np.asarray(classifier.coef_[0], dtype=np.float64),
            "intercept": np.asarray(classifier.intercept_, dtype=np.float64),
        },
    )
    return out_dir


def train_light_sentiment(
    data_dir: Path, out_dir: Path, *, seed: int = 13, recipe: LightRecipe | None = None
) -> Path:
    """Train on `data_dir`/train.tsv, write the artefact to `out_dir`, score it on test.tsv."""
    import sklearn

    recipe = recipe or LightRecipe()
    rows = read_sst2(data_dir / "train.tsv")
    started = time.perf_counter()
    vectorizer, classifier = fit_light(
        [text for text, _ in rows], [label for _, label in rows], recipe, seed=seed
    )
    train_seconds = time.perf_counter() - started
    save_light_artefact(vectorizer, classifier, recipe, out_dir)
    model = TfidfSentiment.load(out_dir)  # the card scores what was written, not what is in memory
    card: dict[str, Any] = {
        "name": model.name,
        "version": model.version,
        "recipe": asdict(recipe),
        "seed": seed,
        "train_rows": len(rows),
        "vocabulary_size": len(vectorizer.idf_),
        "train_seconds": round(train_seconds, 2),
        "preprocess_version": PREPROCESS_VERSION,
        "scikit_learn": sklearn.__version__,
        "numpy": np.__version__,
    }
    if (data_dir / "test.tsv").exists():
        evaluation = evaluate_adapter(model, data_dir, "test")
        card["sst2_test_accuracy"] = round(evaluation["accuracy"], 4)
        card["sst2_test_texts_per_second"] = round(evaluation["texts_per_second"])
    _write_json(out_dir / CARD_FILE, card)
    return out_dir


def _sigmoid(z: float) -> float:
    # Two branches so exp() never overflows, whatever the sign of z.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_npz(
    path: Path, arrays: Mapping[str, npt.NDArray[Any]], *, compress: bool = False
) -> None:
    """np.savez (np.savez_compressed with `compress`) minus the wall-clock timestamps it stores:
    same arrays, same bytes, same version."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            if compress:
                info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
