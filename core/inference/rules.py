"""`sentiment` rules tier: VADER (PyPI `vaderSentiment`), the last resort of the chain.

No learned artefact of ours: the lexicons ship inside the package and are read from its folder at
load, nothing is fetched (the package touches the network only in its `__main__` translation demo).

VADER's compound score c lies in [-1, 1]; it is mapped linearly to p(positive) = (c + 1) / 2 so
the scores read on the same scale as the other tiers'. It is a rescaled polarity, not a calibrated
probability. c = 0 (no sentiment-bearing word found, common for short texts) gives p = 0.5, which
is labelled 'negative' as in every tier (see `sentiment_prediction`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

from core.inference.evaluation import sentiment_prediction
from core.inference.preprocess import MAX_TOKENS, PREPROCESS_VERSION, normalise
from core.inference.types import Prediction

if TYPE_CHECKING:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

VADER_NAME = "vader"
VADER_PACKAGE = "vaderSentiment"
# Both files change what polarity_scores() returns: words, and emoji described as words.
VADER_LEXICONS = ("vader_lexicon.txt", "emoji_utf8_lexicon.txt")


class VaderSentiment:
    """`sentiment` rules tier; pure Python, needs neither numpy nor a trained artefact."""

    name: str
    version: str

    def __init__(self, analyzer: SentimentIntensityAnalyzer, version: str) -> None:
        self.name = VADER_NAME
        self.version = version
        self._analyzer = analyzer

    @classmethod
    def load(cls, lexicon_dir: Traversable | None = None, device: str = "cpu") -> VaderSentiment:
        """Lexicons from the installed package unless `lexicon_dir` is given (tests alter copies).

        `device` is accepted for the adapter interface and ignored: VADER is string rules.
        """
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        directory = lexicon_dir or resources.files(VADER_PACKAGE)
        # The analyzer joins these to its own folder; os.path.join keeps an absolute path as is.
        words, emoji = (str(directory.joinpath(name)) for name in VADER_LEXICONS)
        analyzer = SentimentIntensityAnalyzer(lexicon_file=words, emoji_lexicon=emoji)
        return cls(analyzer, vader_version(directory))

    def compound(self, text: str) -> float:
        # The first MAX_TOKENS words: the bound every tier shares, and VADER's cost grows with it.
        words = normalise(text).split(" ")[:MAX_TOKENS]
        scores = self._analyzer.polarity_scores(" ".join(words))
        return float(scores["compound"])

    @classmethod
    def current_version(cls) -> str:
        return vader_version()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [sentiment_prediction((self.compound(text) + 1.0) / 2.0) for text in texts]


def vader_version(lexicon_dir: Traversable | None = None) -> str:
    """12 hex of sha256 over the package version, the lexicons' bytes and PREPROCESS_VERSION."""
    digest = hashlib.sha256(f"{VADER_PACKAGE}=={metadata.version(VADER_PACKAGE)}\0".encode())
    directory = lexicon_dir or resources.files(VADER_PACKAGE)
    for name in VADER_LEXICONS:
        data = directory.joinpath(name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    digest.update(f"{PREPROCESS_VERSION}\0".encode())
    return digest.hexdigest()[:12]
