"""Data and concept drift: a live window of what the primary tier served, compared with the
reference profile computed at training time from held-out data (``core.inference.drift_profile``).

Each primary-tier result adds one small record to its task's window (label, confidence, length in
words, and a hashed bag of words standing in for an embedding); the window is the last
``INFERQ_DRIFT_WINDOW`` records of all workers together: a Redis list per task, LPUSH then LTRIM
in one pipeline (an in-process deque in embedded mode). Recording never fails a batch.

The detector compares the window with the reference, one standard method per signal, each an
effect size with a fixed threshold rather than a p-value: at 500 items a significance test flags
shifts too small to matter (and every p-value test repeated on each scrape raises false alarms),
while these thresholds mean the same at any window size.

- ``label``, ``confidence``, ``length``: Population Stability Index over the reference's bins;
  0.2 is the customary "significant shift" boundary (0.1-0.2 moderate).
- ``embedding``: a domain classifier two-sample test (C2ST): a nearest-centroid linear classifier
  on L2-normalised hashed bags of words learns to tell window from reference, cross-fitted on two
  folds (fold = a hash of the text, so a repeated text never sits on both sides), and its held-out
  ROC AUC is the score; 0.5 is indistinguishable, 1.0 disjoint.

The hashed bag of words is the embedding signal because it costs microseconds per text on the
worker and needs no model: the primary tier's pooled embedding is not exposed by its adapter, and
the light tier's TF-IDF features would need its 50,000-term vocabulary loaded in every worker.
numpy only (the API image has no scipy): PSI and a rank AUC are a few lines each.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from core.inference.registry import all_tasks

if TYPE_CHECKING:
    from core.config import Settings
    from core.inference.engine import Outcome
    from core.jobs.lifecycle import Claim

log = structlog.get_logger(__name__)

PROFILE_FILE = "drift_profile.json"
PROFILE_FORMAT = 1
WINDOW_KEY = "inferq:drift:{task}:window"
HASH_DIM = 4096  # buckets of the hashed bag of words: few collisions at SST-2/news vocabularies
MAX_HASHED_WORDS = 64  # bounds a record's size; the first 64 words say what a text is about
CONFIDENCE_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # inner edges, as the team's histogram
PSI_THRESHOLD = 0.2
AUC_THRESHOLD = 0.7
MIN_ITEMS = 200  # fewer items: PSI noise alone nears the threshold, so no verdict yet
PSI_FLOOR = 1e-4  # an empty bin counts as this share, so log() stays finite
_WORD = re.compile(r"\w+")

# Where each adapter's artefact (and so its reference profile) lives. An adapter absent here has
# no profile, and its task no drift check. The ONNX and INT8 twins serve the same artefact.
_SENTIMENT_DIR = Path(__file__).resolve().parents[1] / "inference" / "artefacts" / "sentiment"
_LIGHT_DIR = _SENTIMENT_DIR.parent / "sentiment-light"
PROFILE_DIRS: dict[str, Path] = {
    "core.inference.transformer:SentimentTransformer": _SENTIMENT_DIR,
    "core.inference.transformer:QuantizedSentimentTransformer": _SENTIMENT_DIR,
    "core.inference.onnx_transformer:OnnxSentimentTransformer": _SENTIMENT_DIR,
    "core.inference.onnx_transformer:OnnxInt8SentimentTransformer": _SENTIMENT_DIR,
    "core.inference.light:TfidfSentiment": _LIGHT_DIR,
}


# --- what one served item leaves in the window -------------------------------------------------


def hashed_words(words: Sequence[str]) -> list[int]:
    """Sorted distinct buckets of the first words (crc32: the same in every process)."""
    return sorted({zlib.crc32(word.encode()) % HASH_DIM for word in words[:MAX_HASHED_WORDS]})


def fold_of(text: str) -> int:
    return zlib.crc32(text.encode()) & 1


def item_record(label: str, confidence: float, text: str) -> dict[str, Any]:
    """Length counts words, not whitespace tokens: SST-2's tokenised "movie ." and "does n't"
    must not read longer than the same words typed by a user."""
    words = _WORD.findall(text.lower())
    return {
        "l": label,
        "c": round(confidence, 4),
        "n": len(words),
        "h": hashed_words(words),
        "f": fold_of(text),
    }


# --- the live window ---------------------------------------------------------------------------

_MEMORY: dict[str, deque[str]] = {}
_MEMORY_LOCK = threading.Lock()


class DriftWindow:
    """The last `size` records per task, shared by every worker (Redis) or kept in-process."""

    def __init__(self, redis_url: str | None, size: int) -> None:
        self.redis_url = redis_url
        self.size = size

    def push(self, task: str, records: Sequence[Mapping[str, Any]]) -> None:
        encoded = [json.dumps(record, separators=(",", ":")) for record in records]
        if not encoded:
            return
        if self.redis_url is None:
            with _MEMORY_LOCK:
                window = _MEMORY.setdefault(task, deque(maxlen=self.size))
                window.extendleft(encoded)
            return
        pipeline = _redis(self.redis_url).pipeline(transaction=True)
        pipeline.lpush(WINDOW_KEY.format(task=task), *encoded)
        pipeline.ltrim(WINDOW_KEY.format(task=task), 0, self.size - 1)
        pipeline.execute()

    def read(self, task: str) -> list[dict[str, Any]]:
        """Newest first."""
        if self.redis_url is None:
            with _MEMORY_LOCK:
                raw: list[Any] = list(_MEMORY.get(task, ()))[: self.size]
        else:
            raw = _redis(self.redis_url).lrange(WINDOW_KEY.format(task=task), 0, self.size - 1)
        return [json.loads(item) for item in raw]

    def clear(self, task: str) -> None:
        if self.redis_url is None:
            with _MEMORY_LOCK:
                _MEMORY.pop(task, None)
            return
        _redis(self.redis_url).delete(WINDOW_KEY.format(task=task))


def window_for(settings: Settings) -> DriftWindow:
    return DriftWindow(settings.resolved_cache_url, settings.drift_window)


@lru_cache(maxsize=4)
def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def observe(settings: Settings, claims: Iterable[Claim], outcomes: Mapping[int, Outcome]) -> None:
    """After a batch: add its primary-tier results (fresh or cached) to their tasks' windows.
    Only the results of the version the reference profile describes count: a canary's or a
    promoted version's scores have another distribution, and would read as drift.
    Drift is advice for operators, so a Redis error is logged and the batch goes on."""
    from core.inference.engine import Output

    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for claim in claims:
        for item in claim.items:
            output = outcomes.get(item.id)
            if not isinstance(output, Output) or output.tier != "primary":
                continue
            label, score = output.prediction.label, output.prediction.score
            if label is not None and score is not None:
                key = (claim.task, output.version)
                records.setdefault(key, []).append(item_record(label, score, item.text))
    try:
        window = window_for(settings)
        for (task, version), task_records in records.items():
            path = profile_path(task)  # None: nothing would ever read the window
            if path is not None and _profiled_version(path) == version:
                window.push(task, task_records)
    except Exception as exc:  # a drift window must never fail the batch it describes
        log.warning("drift_window_unavailable", error=repr(exc))


# --- the reference profile ---------------------------------------------------------------------


def _profiled_version(path: Path) -> str | None:
    version = _read_profile(path, path.stat().st_mtime_ns).get("version")
    return None if version is None else str(version)


def profile_dir(task: str) -> Path | None:
    """The artefact folder of the task's primary tier, if it is one that can carry a profile."""
    spec = all_tasks().get(task)
    return PROFILE_DIRS.get(spec.chain[0].adapter) if spec is not None else None


def profile_path(task: str) -> Path | None:
    directory = profile_dir(task)
    if directory is None or not (directory / PROFILE_FILE).is_file():
        return None
    return directory / PROFILE_FILE


@lru_cache(maxsize=16)
def _read_profile(path: Path, mtime_ns: int) -> dict[str, Any]:
    profile: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if profile.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{path} is format {profile.get('format')}, not {PROFILE_FORMAT}")
    return profile


def load_profile(task: str) -> dict[str, Any] | None:
    path = profile_path(task)
    return None if path is None else _read_profile(path, path.stat().st_mtime_ns)


def length_edges(lengths: Sequence[int]) -> list[float]:
    """Inner bin edges at the deciles of the reference lengths (ties merged)."""
    deciles = np.quantile(np.asarray(lengths, dtype=np.float64), np.linspace(0.1, 0.9, 9))
    return sorted({float(edge) for edge in np.ceil(deciles)})


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts in len(edges) + 1 bins: (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    bins = np.searchsorted(np.asarray(edges), np.asarray(values, dtype=np.float64), side="right")
    return [int(count) for count in np.bincount(bins, minlength=len(edges) + 1)]


def summarise(records: Sequence[Mapping[str, Any]], source: str) -> dict[str, Any]:
    """The signal part of a profile: what `detect` compares a window with."""
    lengths = [int(record["n"]) for record in records]
    edges = length_edges(lengths)
    return {
        "format": PROFILE_FORMAT,
        "source": source,
        "n": len(records),
        "labels": dict(sorted(Counter(str(record["l"]) for record in records).items())),
        "confidence": {
            "edges": list(CONFIDENCE_EDGES),
            "counts": histogram([float(record["c"]) for record in records], CONFIDENCE_EDGES),
        },
        "length": {"unit": "words", "edges": edges, "counts": histogram(lengths, edges)},
        # The sample itself (not a summary): the domain classifier trains on it.
        "embedding": {
            "method": f"hashed bag of words, {HASH_DIM} buckets (crc32), first "
            f"{MAX_HASHED_WORDS} words",
            "sample": [[record["f"], *record["h"]] for record in records],
        },
    }


# --- the detector ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signal:
    name: str
    method: str
    score: float
    threshold: float

    @property
    def drifted(self) -> bool:
        return self.score >= self.threshold


@dataclass(frozen=True)
class DriftReport:
    task: str
    window: dict[str, Any]
    reference: dict[str, Any]
    signals: list[Signal] = field(default_factory=list)
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def drifted(self) -> bool:
        return any(signal.drifted for signal in self.signals)


def psi(reference: Sequence[int], window: Sequence[int]) -> float:
    """Population Stability Index: sum over bins of (q - p) ln(q / p)."""
    p = np.maximum(np.asarray(reference, dtype=np.float64) / max(sum(reference), 1), PSI_FLOOR)
    q = np.maximum(np.asarray(window, dtype=np.float64) / max(sum(window), 1), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def _unit_rows(rows: Sequence[Sequence[int]]) -> npt.NDArray[np.float64]:
    """Dense L2-normalised binary bag-of-words rows."""
    matrix = np.zeros((len(rows), HASH_DIM))
    for index, buckets in enumerate(rows):
        if buckets:
            matrix[index, list(buckets)] = 1.0 / math.sqrt(len(buckets))
    return matrix


def rank_auc(positive: npt.NDArray[np.float64], negative: npt.NDArray[np.float64]) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney U / n m)."""
    ranked = np.sort(negative)
    below = np.searchsorted(ranked, positive, side="left")
    not_above = np.searchsorted(ranked, positive, side="right")
    return float(np.sum(below + 0.5 * (not_above - below)) / (len(positive) * len(negative)))


def domain_auc(
    window: Sequence[tuple[int, Sequence[int]]], reference: Sequence[tuple[int, Sequence[int]]]
) -> float:
    """Held-out ROC AUC of a nearest-centroid classifier of window vs reference, two folds."""
    w_fold = np.array([fold for fold, _ in window])
    r_fold = np.array([fold for fold, _ in reference])
    w_rows = _unit_rows([buckets for _, buckets in window])
    r_rows = _unit_rows([buckets for _, buckets in reference])
    w_scores, r_scores = [], []
    for fold in (0, 1):
        w_train, r_train = w_rows[w_fold != fold], r_rows[r_fold != fold]
        if not len(w_train) or not len(r_train):
            continue
        direction = w_train.mean(axis=0) - r_train.mean(axis=0)
        w_scores.append(w_rows[w_fold == fold] @ direction)
        r_scores.append(r_rows[r_fold == fold] @ direction)
    positive = np.concatenate(w_scores) if w_scores else np.array([])
    negative = np.concatenate(r_scores) if r_scores else np.array([])
    return rank_auc(positive, negative) if len(positive) and len(negative) else 0.5


def signals(profile: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[Signal]:
    labels = list(profile["labels"])
    label_counts = Counter(str(record["l"]) for record in records)
    unseen = sum(count for label, count in label_counts.items() if label not in labels)
    confidence = profile["confidence"]
    length = profile["length"]
    sample = [(int(row[0]), row[1:]) for row in profile["embedding"]["sample"]]
    window_sample = [(int(record["f"]), record["h"]) for record in records]
    return [
        Signal(
            "label",
            "psi",
            psi(
                [*profile["labels"].values(), 0],
                [*(label_counts[label] for label in labels), unseen],
            ),
            PSI_THRESHOLD,
        ),
        Signal(
            "confidence",
            "psi",
            psi(confidence["counts"], histogram([r["c"] for r in records], confidence["edges"])),
            PSI_THRESHOLD,
        ),
        Signal(
            "length",
            "psi",
            psi(length["counts"], histogram([r["n"] for r in records], length["edges"])),
            PSI_THRESHOLD,
        ),
        Signal(
            "embedding", "domain-classifier-auc", domain_auc(window_sample, sample), AUC_THRESHOLD
        ),
    ]


def detect(
    task: str, profile: Mapping[str, Any], records: Sequence[Mapping[str, Any]], capacity: int
) -> DriftReport:
    """Compare a window (newest first) with a profile; no verdict under MIN_ITEMS items."""
    enough = len(records) >= min(MIN_ITEMS, capacity)
    reference = {key: profile.get(key) for key in ("tier", "model", "version", "source", "n")}
    return DriftReport(
        task=task,
        window={"size": len(records), "capacity": capacity, "min_items": min(MIN_ITEMS, capacity)},
        reference=reference,
        signals=signals(profile, records) if enough else [],
    )


class NoProfile(LookupError):
    """The task has no reference profile (its primary tier carries none, or none was made)."""


def check(settings: Settings, task: str) -> DriftReport:
    """The task's live window against its reference profile, now."""
    profile = load_profile(task)
    if profile is None:
        raise NoProfile(task)
    window = window_for(settings)
    return detect(task, profile, window.read(task), window.size)


# --- Prometheus --------------------------------------------------------------------------------

COLLECT_CACHE_SECONDS = 5.0


class DriftCollector:
    """``inferq_drift_score{task,signal}`` and ``inferq_drift_detected{task}``, computed from the
    shared window at scrape time (cached a few seconds): every API process reports the same
    values, and nothing is written to the multiprocess files that /metrics would add up."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cached: tuple[float, list[DriftReport]] = (-math.inf, [])

    def reports(self) -> list[DriftReport]:
        with self._lock:
            taken, reports = self._cached
            if time.monotonic() - taken < COLLECT_CACHE_SECONDS:
                return reports
            reports = []
            for task in sorted(all_tasks()):
                try:
                    reports.append(check(self.settings, task))
                except NoProfile:
                    continue
                except Exception as exc:  # one unreadable window must not empty /metrics
                    log.warning("drift_check_failed", task=task, error=repr(exc))
            self._cached = (time.monotonic(), reports)
            return reports

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        score = GaugeMetricFamily(
            "inferq_drift_score",
            "Drift score of a task's live window against its reference profile, by signal "
            "(PSI for label, confidence, length; domain classifier ROC AUC for embedding)",
            labels=["task", "signal"],
        )
        detected = GaugeMetricFamily(
            "inferq_drift_detected",
            "1 when some signal of the task's live window is over its threshold",
            labels=["task"],
        )
        for report in self.reports():
            for signal in report.signals:
                score.add_metric([report.task, signal.name], signal.score)
            detected.add_metric([report.task], float(report.drifted))
        yield score
        yield detected

    def describe(self) -> Iterable[Any]:
        return []  # computed at scrape time only: registering must not read Redis


def collector_for(state: Any) -> DriftCollector:
    """The app's one collector (kept on its state so its few-second cache outlives a scrape)."""
    collector: DriftCollector | None = getattr(state, "drift_collector", None)
    if collector is None:
        collector = DriftCollector(state.settings)
        state.drift_collector = collector
    return collector
