"""Character offsets in ``normalise(text)`` mapped back to the text as sent.

``normalise`` NFC-composes, collapses whitespace runs to one space and strips, so its output is
shorter than, or reordered against, its input. `align` rebuilds that same string piece by piece
and records, for every character of it, the span of the original it came from:

- a whitespace run becomes one space, which stands for the whole run;
- everything else is cut into the smallest pieces that NFC treats independently (a character
  that starts a new cluster, with the combining marks after it; merged with its neighbour where
  NFC composes across, e.g. Hangul jamo), and each output character of a piece stands for the
  whole piece.

An entity found in the normalised string therefore maps to the original span of the pieces it
covers, and the entity's text is the original's slice, exactly as sent. The rebuilt string is
checked against ``normalise`` itself, so the mapping can never drift from the one preprocessing
path: a mismatch raises instead of returning wrong offsets.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from itertools import pairwise

from core.inference.preprocess import normalise

ALIGNMENT_VERSION = "1"  # bump when the mapping of offsets changes (it is in the ner version)

# \S as `normalise` reads whitespace (\s): NFC maps no whitespace to non-whitespace or back.
_NON_SPACE = re.compile(r"\S+")


@dataclass(frozen=True)
class Alignment:
    original: str
    normalised: str
    starts: tuple[int, ...]  # per normalised character: where its source starts in `original`
    ends: tuple[int, ...]  # ... and where it ends

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of normalised characters [start, end); end > start."""
        if not 0 <= start < end <= len(self.normalised):
            raise ValueError(f"span [{start}, {end}) outside a text of {len(self.normalised)}")
        return self.starts[start], self.ends[end - 1]


def _clusters(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) cut before every character with combining class 0."""
    cuts = [i for i in range(start + 1, end) if unicodedata.combining(text[i]) == 0]
    bounds = [start, *cuts, end]
    return list(pairwise(bounds))


def _nfc_pieces(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Clusters of text[start:end], merged wherever NFC of the pair differs from NFC of each."""
    pieces: list[tuple[int, int]] = []
    for cluster in _clusters(text, start, end):
        if pieces:
            (p_start, p_end), (c_start, c_end) = pieces[-1], cluster
            joined = unicodedata.normalize("NFC", text[p_start:c_end])
            apart = unicodedata.normalize("NFC", text[p_start:p_end]) + unicodedata.normalize(
                "NFC", text[c_start:c_end]
            )
            if joined != apart:
                pieces[-1] = (p_start, c_end)
                continue
        pieces.append(cluster)
    word = unicodedata.normalize("NFC", text[start:end])
    if "".join(unicodedata.normalize("NFC", text[s:e]) for s, e in pieces) != word:
        return [(start, end)]  # NFC reached past a neighbour: the whole word as one piece
    return pieces


def align(text: str) -> Alignment:
    """``normalise(text)`` with the original span of each of its characters."""
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    previous_end: int | None = None
    for word in _NON_SPACE.finditer(text):
        if previous_end is not None:  # the whitespace run between two words: one space
            parts.append(" ")
            starts.append(previous_end)
            ends.append(word.start())
        for start, end in _nfc_pieces(text, word.start(), word.end()):
            piece = unicodedata.normalize("NFC", text[start:end])
            parts.append(piece)
            starts.extend([start] * len(piece))
            ends.extend([end] * len(piece))
        previous_end = word.end()
    normalised = "".join(parts)
    if normalised != normalise(text):
        raise RuntimeError("offset alignment disagrees with normalise(); bump ALIGNMENT_VERSION")
    return Alignment(text, normalised, tuple(starts), tuple(ends))
