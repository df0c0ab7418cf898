"""`langid` rules tier: the Unicode script of a text's letters names its language, where it can.

No learned artefact and no dependency: the script of a letter is the first word of its Unicode
name (unicodedata), so the rule is exact for what it decides and says so when it cannot.

- A script used by one language answers that language (Hangul -> ko, Greek -> el, Thai -> th...).
- Japanese writes Han with kana, Chinese never uses kana: any kana among the letters -> ja,
  Han alone -> zh (so a short kanji-only Japanese text reads as zh: a known limit).
- Shared scripts are split by letters only some of their languages use: Cyrillic (uk, kk, sr, mk,
  ru, bg; plain Cyrillic -> ru), Arabic (ur, fa; plain Arabic -> ar). Devanagari -> hi (Marathi
  and Nepali share it).
- Latin is written by too many languages to name one from letters: the tier raises
  `LanguageUndetected` for it, as for any script not in the table, and the chain reports that
  the rules could not decide instead of a guess.

The decision follows the script of most of the letters. score = that script's share of the
letters (script purity, not a calibrated probability); scores = the share of each decided
script's language, top 3.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter
from collections.abc import Sequence

from core.inference.preprocess import PREPROCESS_VERSION, normalise
from core.inference.types import NoAnswer, Prediction

RULES_NAME = "unicode-script"
TOP_K = 3
# Bump when the decision logic below changes (the tables are hashed into the version anyway).
RULES_REVISION = "1"

# Script (first word of the Unicode name) -> the language it names on its own.
SCRIPT_LANGUAGE = {
    "ARMENIAN": "hy", "BENGALI": "bn", "DEVANAGARI": "hi", "ETHIOPIC": "am", "GEORGIAN": "ka",
    "GREEK": "el", "GUJARATI": "gu", "GURMUKHI": "pa", "HANGUL": "ko", "HEBREW": "he",
    "KANNADA": "kn", "KHMER": "km", "LAO": "lo", "MALAYALAM": "ml", "MYANMAR": "my",
    "SINHALA": "si", "TAMIL": "ta", "TELUGU": "te", "THAI": "th", "TIBETAN": "bo",
    "ARABIC": "ar", "CYRILLIC": "ru", "CJK": "zh",
}  # fmt: skip
# Within a shared script, the first language (in this order) one of whose letters occurs wins.
DISTINCT_LETTERS: dict[str, tuple[tuple[str, str], ...]] = {
    "CYRILLIC": (
        ("kk", "әғқңөұһ"),
        ("uk", "єіїґ"),
        ("sr", "ђћџљњј"),
        ("mk", "ѓќѕ"),
        ("ru", "ыэё"),
        ("bg", "ъ"),
    ),
    "ARABIC": (("ur", "ٹڈڑںے"), ("fa", "پچژگکی")),
}


class LanguageUndetected(NoAnswer):
    """This text's language cannot be decided (no letter, or a script the rule cannot split)."""


class ScriptLangId:
    """`langid` rules tier; pure Python, no model."""

    name: str
    version: str

    def __init__(self) -> None:
        self.name = RULES_NAME
        self.version = self.current_version()

    @classmethod
    def load(cls, device: str = "cpu") -> ScriptLangId:
        """`device` is accepted for the adapter interface and ignored."""
        return cls()

    @classmethod
    def current_version(cls) -> str:
        tables = repr((sorted(SCRIPT_LANGUAGE.items()), DISTINCT_LETTERS))
        parts = (RULES_REVISION, tables, unicodedata.unidata_version, PREPROCESS_VERSION)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """LanguageUndetected if any text is undecidable: the engine then isolates that input."""
        return [decide(normalise(text)) for text in texts]


def decide(text: str) -> Prediction:
    letters = [char for char in text if char.isalpha()]
    if not letters:
        raise LanguageUndetected(f"no letter in {text[:40]!r}")
    scripts = Counter(script_of(char) for char in letters)
    if "KANA" in scripts:  # Japanese: kana and the Han mixed with it count together
        scripts["JAPANESE"] = scripts.pop("KANA") + scripts.pop("CJK", 0)
    majority, _ = scripts.most_common(1)[0]
    if majority != "JAPANESE" and majority not in SCRIPT_LANGUAGE:
        raise LanguageUndetected(f"{majority.lower()} script names no single language")
    shares: dict[str, float] = {}
    for script, count in scripts.most_common():
        language = _language(script, text)
        if language is not None and language not in shares:
            shares[language] = count / len(letters)
    return ranked_prediction(list(shares.items()))


def _language(script: str, text: str) -> str | None:
    if script == "JAPANESE":
        return "ja"
    lowered = text.lower()
    for language, marks in DISTINCT_LETTERS.get(script, ()):
        if any(mark in lowered for mark in marks):
            return language
    return SCRIPT_LANGUAGE.get(script)


def script_of(char: str) -> str:
    """The first word of the character's Unicode name: 'LATIN', 'CYRILLIC', 'CJK', 'HANGUL'...;
    'KANA' for hiragana and katakana, half-width and the prolonged sound mark included."""
    name = unicodedata.name(char, "UNKNOWN")
    if "HIRAGANA" in name or "KATAKANA" in name:
        return "KANA"
    return name.split(" ", 1)[0]


def has_letter(text: str) -> bool:
    return any(char.isalpha() for char in text)


def ranked_prediction(pairs: Sequence[tuple[str, float]]) -> Prediction:
    """Prediction from (code, probability) pairs, best first: top-TOP_K scores, top label."""
    ranked = sorted(pairs, key=lambda pair: pair[1], reverse=True)[:TOP_K]
    if not ranked:
        raise LanguageUndetected("no candidate language")
    scores = {code: min(max(float(p), 0.0), 1.0) for code, p in ranked}
    label = ranked[0][0]
    return Prediction(label=label, score=scores[label], scores=scores)
