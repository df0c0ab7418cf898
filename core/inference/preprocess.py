"""The one text normalisation shared by training, evaluation and serving.

Every path that turns text into model input goes through ``normalise`` and truncates at
``MAX_TOKENS``; ``PREPROCESS_VERSION`` is folded into each model's version (and so into the
result cache key), so bump it whenever ``normalise`` or the meaning of ``MAX_TOKENS`` changes.

Case is kept on purpose: the MiniLM tokenizer lower-cases by itself, and other tiers (rules such as
VADER) read capitals as emphasis, so folding case here would throw information away for them.
"""

from __future__ import annotations

import re
import unicodedata

PREPROCESS_VERSION = "1"

# Word pieces per text, [CLS] and [SEP] included. 256 is the base model's own
# sentence-transformers limit, so `embed` matches the reference embeddings; SST-2 texts never come
# near it, and batches are padded only to their longest member, so short texts pay nothing for it.
MAX_TOKENS = 256

_WHITESPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFC-compose, collapse every whitespace run (tabs, newlines, NBSP) to one space, strip."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()
