"""Accuracy and throughput of the `ner` tier (spaCy `en_core_web_sm`, `ner` pipe only) on this CPU.

Accuracy: entity-level precision, recall and F1 on the project's own labelled set
(data/ner/test.jsonl, see its README): exact span and label, and span only, overall and per label.
Throughput: the evaluation sentences repeated to ``--n`` texts, through the adapter's `predict`
(alignment of offsets included, as served) one text a call, then all texts in one call, which
runs `nlp.pipe` in batches of ``--batch-size``; the median of ``--rounds`` rounds each. Load time
is the first `SpacyEntities.load()` of this process (spaCy's import included); RSS is read after
the runs and before `machine_facts` imports torch. thinc (under spaCy) imports torch whenever it
is installed, which is most of that load time and RSS; ``without_torch`` loads the tier again in
a child process where torch cannot be imported (as in an image without it) and checks that its
entities on the evaluation set are the same.

    python -m bench.ner_accuracy --n 2000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import base_params, emit, install_signal_handlers, log, machine_facts, rate
from core.inference.ner import (
    DEFAULT_NER_SET,
    NER_PACKAGE,
    SpacyEntities,
    evaluate_entities,
    prediction_spans,
    read_ner_set,
)


def rss_mib() -> float:
    """Resident set size now, from /proc (Linux); NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def texts_per_second(adapter: SpacyEntities, texts: list[str], batched: bool, rounds: int) -> float:
    rates = []
    for _ in range(max(1, rounds)):
        start = time.perf_counter()
        if batched:
            adapter.predict(texts)
        else:
            for text in texts:
                adapter.predict([text])
        rates.append(rate(len(texts), time.perf_counter() - start))
    return statistics.median(rates)


# Run in a child: torch blocked before spaCy is imported, then the same load and predictions.
_WITHOUT_TORCH = """
import json, sys, time
sys.modules["torch"] = None
from bench.ner_accuracy import rss_mib
from core.inference.ner import SpacyEntities, prediction_spans, read_ner_set
start = time.perf_counter()
adapter = SpacyEntities.load()
seconds = time.perf_counter() - start
spans = [prediction_spans(p) for p in adapter.predict([t for t, _ in read_ner_set()])]
print(json.dumps({"load_seconds": seconds, "rss_mib_after_load_and_scoring": rss_mib(),
                  "torch_imported": sys.modules.get("torch") is not None, "spans": spans}))
"""


def without_torch(spans: list[list[tuple[int, int, str]]]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH], capture_output=True, text=True, check=True
    )
    found: dict[str, Any] = json.loads(done.stdout)
    found["same_entities"] = [[tuple(s) for s in doc] for doc in found.pop("spans")] == spans
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="texts per throughput round")
    parser.add_argument("--batch-size", type=int, default=64, help="nlp.pipe batch size")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per throughput figure")
    args = parser.parse_args()
    install_signal_handlers()

    rss_before = rss_mib()
    start = time.perf_counter()
    adapter = SpacyEntities.load(batch_size=args.batch_size)
    load_seconds = time.perf_counter() - start
    rss_loaded = rss_mib()

    rows = read_ner_set()
    log(f"scoring {len(rows)} sentences")
    predicted = [prediction_spans(p) for p in adapter.predict([text for text, _ in rows])]
    evaluation = evaluate_entities([g for _, g in rows], predicted)

    texts = [rows[i % len(rows)][0] for i in range(args.n)]
    log(f"throughput over {len(texts)} texts, {args.rounds} rounds each way")
    single = texts_per_second(adapter, texts, batched=False, rounds=args.rounds)
    batched = texts_per_second(adapter, texts, batched=True, rounds=args.rounds)
    rss_after = rss_mib()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log("loading again in a child process without torch")
    no_torch = without_torch(predicted)

    from importlib import metadata

    results: dict[str, Any] = {
        "model": {
            "name": adapter.name,
            "version": adapter.version,
            "package": f"{NER_PACKAGE}=={metadata.version(NER_PACKAGE)}",
            "spacy": metadata.version("spacy"),
            "pipes": list(adapter._nlp.pipe_names),
        },
        "dataset": {"path": str(DEFAULT_NER_SET.relative_to(DEFAULT_NER_SET.parents[2]))}
        | {"sentences": len(rows), "gold_entities": evaluation.gold},
        "accuracy": evaluation.as_dict(),
        "per_label_f1": {label: s["f1"] for label, s in evaluation.per_label.items()},
        "throughput_texts_per_second": {"one_at_a_time": single, "batched": batched},
        "batched_over_single": batched / single if single else None,
        "load_seconds": load_seconds,
        "rss_mib": {"before_load": rss_before, "after_load": rss_loaded, "after_runs": rss_after},
        "peak_rss_mib": peak,
        "without_torch": no_torch,
    }
    emit(
        "ner_accuracy",
        params=base_params(args),
        machine=machine_facts(),
        results=results,
        targets={"exact_f1_min": 0.75, "exact_f1_met": evaluation.exact["f1"] >= 0.75},
        table=[
            ("exact P / R / F1", _prf(evaluation.exact)),
            ("span-only P / R / F1", _prf(evaluation.span)),
            ("texts/s one at a time", single),
            (f"texts/s batched ({args.batch_size})", batched),
            ("load seconds", load_seconds),
            ("RSS MiB after runs", rss_after),
            ("RSS MiB without torch", no_torch["rss_mib_after_load_and_scoring"]),
            ("load seconds without torch", no_torch["load_seconds"]),
        ],
    )


def _prf(scores: Any) -> str:
    return f"{scores['precision']:.3f} / {scores['recall']:.3f} / {scores['f1']:.3f}"


if __name__ == "__main__":
    main()
