"""How fast drift is flagged, and how often it is flagged for nothing, with the profile that ships.

A model tier (the `sentiment` primary by default: MiniLM, run in-process on CPU) predicts each
distinct text once; the served stream is then replayed through the live window
(``core.telemetry.drift.DriftWindow``, in-process unless --redis-url) and the detector runs on
it exactly as GET /v1/models/sentiment/drift does.

1. In-domain: 10 consecutive windows (5,000 items) drawn with replacement from the unseen half
   of SST-2 test.tsv (the profile was made from the other half). The detector runs every
   --step items once the window is full; `false_alarms` counts the full windows that ended
   flagged, `false_alarm_checks` every check that was.
2. Switch: AG News texts follow, --step at a time; `items_until_flagged` is how many AG News
   items the window held at the first flagged check. The window then fills with AG News.

Drawing 5,000 items from 436 unseen sentences repeats each about 11 times: every window shares
the pool's own sampling error against the profile, on top of its own. That makes false alarms
likelier than with fresh data, not less likely.

    python -m bench.drift                 # the primary tier (torch, CPU)
    python -m bench.drift --tier fallback # the light tier (TF-IDF + logistic regression)
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path
from typing import Any

from bench.common import REPO, base_params, emit, log, machine_facts, quiet_logging
from core.inference.drift_profile import held_out_split
from core.inference.registry import TASKS, adapter_class
from core.telemetry.drift import PROFILE_DIRS, PROFILE_FILE, DriftWindow, detect, item_record

AGNEWS_TEST = REPO / "data" / "agnews" / "test.tsv"
WINDOWS = 10


def read_agnews(path: Path = AGNEWS_TEST) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [row[0] for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]


def served_records(tier: str, texts: list[str], device: str) -> dict[str, dict[str, Any]]:
    """text -> the window record of the tier's prediction for it (each text predicted once)."""
    spec = next(t for t in TASKS["sentiment"].chain if t.tier == tier)
    model = adapter_class(spec).load(device=device)
    distinct = sorted(set(texts))
    return {
        text: item_record(str(prediction.label), float(prediction.score or 0.0), text)
        for text, prediction in zip(distinct, model.predict(distinct), strict=True)
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = next(t for t in TASKS["sentiment"].chain if t.tier == args.tier)
    profile = json.loads((PROFILE_DIRS[spec.adapter] / PROFILE_FILE).read_text(encoding="utf-8"))
    _, unseen = held_out_split()
    rng = random.Random(args.seed)
    agnews = rng.sample(read_agnews(), args.window)
    log(f"predicting {len(unseen)} unseen SST-2 sentences and {len(agnews)} AG News texts")
    records = served_records(args.tier, unseen + agnews, args.device)
    window = DriftWindow(args.redis_url, args.window)
    window.clear("sentiment")

    def check() -> Any:
        return detect("sentiment", profile, window.read("sentiment"), args.window)

    in_domain: list[dict[str, Any]] = []
    alarm_checks = checks = 0
    stream = [rng.choice(unseen) for _ in range(WINDOWS * args.window)]
    for served in range(args.step, len(stream) + 1, args.step):
        window.push("sentiment", [records[t] for t in stream[served - args.step : served]])
        if served < args.window:
            continue
        report = check()
        checks += 1
        alarm_checks += report.drifted
        if served % args.window == 0:
            in_domain.append(_summary(report))
    flagged_at: int | None = None
    switch: list[dict[str, Any]] = []
    for served in range(args.step, len(agnews) + 1, args.step):
        window.push("sentiment", [records[t] for t in agnews[served - args.step : served]])
        report = check()
        switch.append({"agnews_items": served, **_summary(report)})
        if report.drifted and flagged_at is None:
            flagged_at = served
    return {
        "tier": args.tier,
        "model": profile["model"],
        "version": profile["version"],
        "items_until_flagged": flagged_at,
        "items_until_flagged_by_signal": {
            name: next((s["agnews_items"] for s in switch if name in s["flagged_by"]), None)
            for name in switch[-1]["scores"]
        },
        "false_alarms": sum(window_["drifted"] for window_ in in_domain),
        "windows": len(in_domain),
        "false_alarm_checks": alarm_checks,
        "checks": checks,
        "max_in_domain_scores": {
            name: max(w["scores"][name] for w in in_domain) for name in in_domain[0]["scores"]
        },
        "thresholds": in_domain[0]["thresholds"],
        "in_domain_windows": in_domain,
        "switch": switch,
    }


def _summary(report: Any) -> dict[str, Any]:
    return {
        "drifted": report.drifted,
        "scores": {s.name: round(s.score, 4) for s in report.signals},
        "thresholds": {s.name: s.threshold for s in report.signals},
        "flagged_by": [s.name for s in report.signals if s.drifted],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tier", choices=("primary", "fallback"), default="primary")
    parser.add_argument("--window", type=int, default=500, help="INFERQ_DRIFT_WINDOW")
    parser.add_argument("--step", type=int, default=25, help="items between two checks")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--redis-url", default=None, help="keep the window in this Redis db")
    args = parser.parse_args()
    quiet_logging()
    results = run(args)
    flagged = next((s for s in results["switch"] if s["drifted"]), None)
    emit(
        "drift",
        params=base_params(args),
        machine=machine_facts(),
        results=results,
        targets={"items_until_flagged_at_most": args.window, "false_alarms": 0},
        table=[
            ("tier", f"{results['tier']} ({results['model']} {results['version']})"),
            ("items until flagged", results["items_until_flagged"]),
            ("flagged by", ", ".join(flagged["flagged_by"]) if flagged else "-"),
            ("false alarms (windows)", f"{results['false_alarms']} / {results['windows']}"),
            ("false alarms (checks)", f"{results['false_alarm_checks']} / {results['checks']}"),
            *((f"max in-domain {k}", v) for k, v in results["max_in_domain_scores"].items()),
            *((f"all-AG News {k}", v) for k, v in results["switch"][-1]["scores"].items()),
        ],
    )


if __name__ == "__main__":
    main()
