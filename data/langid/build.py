"""Build data/langid/eval.tsv: short sentences in many languages, labelled with ISO 639-1 codes.

Source: the translation catalogues that ship inside the Django wheel on PyPI (BSD-3-Clause; see
README.md beside this file). Each catalogue maps an English message (msgid) to its human
translation (msgstr). We keep the messages that read as sentences, so that the set tests short
natural text rather than menu labels:

- the English msgid has 3..20 words and ends with '.', '?' or '!';
- the translation is short too: 3..30 words, or 4..80 characters in the languages written without
  spaces between words (ja, zh, th);
- neither side has a placeholder, markup, code or escape (% { } < > _ = ` \\ or a URL): not prose;
- the translation differs from the msgid (an untranslated copy would be English under another
  label), and fuzzy entries are absent because msgfmt leaves them out of the compiled .mo files.

English rows are the msgids themselves. A text that appears under two labels is dropped. Output is
sorted (label, text), so the same wheel always yields the same bytes.

    .venv/bin/python data/langid/build.py                    # fetches the pinned wheel with pip
    .venv/bin/python data/langid/build.py --wheel PATH.whl   # or reads one you already have
"""

from __future__ import annotations

import argparse
import hashlib
import re
import struct
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from collections import defaultdict
from pathlib import Path

DJANGO = "django==5.2.19"
WHEEL_NAME = "django-5.2.19-py3-none-any.whl"
WHEEL_SHA256 = "5965d974a5218a2b68a11dd1276434707f23886525c23f0598eccedaf4f4ca00"
OUT = Path(__file__).resolve().parent / "eval.tsv"

# Django locale folder -> ISO 639-1 label. Chosen to mix easy cases (own script) with close pairs
# that short texts confuse: ru/uk/bg, da/sv, cs/pl, es/pt/it, id, fa/ar.
LOCALES = {
    "ar": "ar", "bg": "bg", "cs": "cs", "da": "da", "de": "de", "el": "el", "es": "es",
    "fa": "fa", "fi": "fi", "fr": "fr", "he": "he", "hi": "hi", "hu": "hu", "id": "id",
    "it": "it", "ja": "ja", "ko": "ko", "nl": "nl", "pl": "pl", "pt": "pt", "ro": "ro",
    "ru": "ru", "sv": "sv", "th": "th", "tr": "tr", "uk": "uk", "vi": "vi", "zh_Hans": "zh",
}  # fmt: skip
NOT_PROSE = re.compile(r"[%{}<>_=`\\]|https?:")
SENTENCE_END = (".", "?", "!")
MIN_WORDS, MAX_WORDS = 3, 20
MAX_TRANSLATED_WORDS = 30  # translations run longer than their English source
UNSPACED = frozenset({"ja", "zh", "th"})
MIN_CHARS, MAX_CHARS = 4, 80  # for UNSPACED
_WHITESPACE = re.compile(r"\s+")
_CATALOGUE = re.compile(r"^django/(?:.+/)?locale/([^/]+)/LC_MESSAGES/django\.mo$")


def read_mo(data: bytes) -> dict[str, str]:
    """msgid -> msgstr of a compiled GNU gettext catalogue (the header and plurals left out)."""
    order = "<" if struct.unpack("<I", data[:4])[0] == 0x950412DE else ">"
    _revision, count, originals, translations = struct.unpack(order + "4I", data[4:20])
    catalogue: dict[str, str] = {}
    for i in range(count):
        key_len, key_at = struct.unpack(
            order + "2I", data[originals + 8 * i : originals + 8 * i + 8]
        )
        val_len, val_at = struct.unpack(
            order + "2I", data[translations + 8 * i : translations + 8 * i + 8]
        )
        key = data[key_at : key_at + key_len].decode("utf-8")
        # "" is the header; NUL joins plural forms, EOT separates a context from the msgid.
        if key and "\x00" not in key and "\x04" not in key:
            catalogue[key] = data[val_at : val_at + val_len].decode("utf-8")
    return catalogue


def clean(text: str) -> str:
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def is_sentence(msgid: str) -> bool:
    return MIN_WORDS <= len(msgid.split()) <= MAX_WORDS and msgid.endswith(SENTENCE_END)


def is_short(text: str, label: str) -> bool:
    if label in UNSPACED:
        return MIN_CHARS <= len(text) <= MAX_CHARS
    return MIN_WORDS <= len(text.split()) <= MAX_TRANSLATED_WORDS


def collect(wheel: Path) -> dict[str, set[str]]:
    """label -> texts, from every django.mo (core and contrib apps) of the chosen locales."""
    by_label: dict[str, set[str]] = defaultdict(set)
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            match = _CATALOGUE.match(name)
            if not match or match.group(1) not in LOCALES:
                continue
            label = LOCALES[match.group(1)]
            for msgid, msgstr in read_mo(archive.read(name)).items():
                source, text = clean(msgid), clean(msgstr)
                if not is_sentence(source) or NOT_PROSE.search(source + text):
                    continue
                by_label["en"].add(source)
                if text != source and is_short(text, label):
                    by_label[label].add(text)
    return by_label


def rows(by_label: dict[str, set[str]]) -> list[tuple[str, str]]:
    labels_of: dict[str, set[str]] = defaultdict(set)
    for label, texts in by_label.items():
        for text in texts:
            labels_of[text].add(label)
    ambiguous = {text for text, labels in labels_of.items() if len(labels) > 1}
    return sorted(
        (text, label)
        for label, texts in by_label.items()
        for text in texts
        if text not in ambiguous
    )


def fetch_wheel(folder: Path) -> Path:
    subprocess.run(  # noqa: S603 (a fixed pip command, this interpreter)
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", DJANGO,
         "-d", str(folder)],
        check=True,
    )  # fmt: skip
    return folder / WHEEL_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a local {WHEEL_NAME} (else pip fetches it)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            sys.exit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}")
        table = rows(collect(wheel))
    with args.out.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("text\tlabel\n")
        handle.writelines(f"{text}\t{label}\n" for text, label in table)
    counts: dict[str, int] = defaultdict(int)
    for _, label in table:
        counts[label] += 1
    print(f"{args.out}: {len(table)} rows, {len(counts)} labels", dict(sorted(counts.items())))


if __name__ == "__main__":
    main()
