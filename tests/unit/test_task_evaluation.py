"""`inferq models evaluate ner|langid` as a user runs it: in a subprocess, on small labelled files
written here, figures checked against counts worked out by hand. `ner` runs the real spaCy tier
(a few seconds); `langid` is pointed at its rules tier alone through INFERQ_TASKS, so that the
test does not load Lingua (1.3 GB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.inference.langid_rules import ScriptLangId
from core.inference.ner import SpacyEntities


def inferq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    wide = {**os.environ, "COLUMNS": "250", **env}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, check=False, env=wide
    )


def test_ner_evaluation_prints_and_writes_entity_precision_recall_and_f1(tmp_path: Path) -> None:
    data = tmp_path / "ner.jsonl"
    # spaCy finds PERSON 0-13, GPE 22-27 and DATE 31-41 here; the gold below calls the date an
    # EVENT: 2 exact matches of 3 found and 3 gold, 3 of 3 by span.
    gold = [
        {"start": 0, "end": 13, "label": "PERSON"},
        {"start": 22, "end": 27, "label": "GPE"},
        {"start": 31, "end": 41, "label": "EVENT"},
    ]
    row = {"text": "Angela Merkel visited Paris in March 2019.", "entities": gold}
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    metrics = tmp_path / "metrics.json"

    done = inferq("models", "evaluate", "ner", "--data", str(data), "--metrics-json", str(metrics))

    assert done.returncode == 0, done.stderr
    figures = json.loads(metrics.read_text())["primary"]
    assert figures["version"] == SpacyEntities.current_version()
    assert figures["exact"]["f1"] == pytest.approx(2 / 3)
    assert (figures["exact"]["tp"], figures["exact"]["fp"], figures["exact"]["fn"]) == (2, 1, 1)
    assert figures["span"]["f1"] == 1.0
    assert "0.6667" in done.stdout and "spacy-en_core_web_sm" in done.stdout


def test_langid_evaluation_counts_what_a_tier_cannot_decide_as_wrong(tmp_path: Path) -> None:
    data = tmp_path / "langid.tsv"
    rows = [
        "text\tlabel",
        "Привет, как дела?\tru",
        "안녕하세요\tko",
        "Hello there\ten",
        "Guten Tag\tde",
    ]
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    metrics = tmp_path / "metrics.json"
    rules_only = {"langid": {"chain": [
        {"tier": "rules", "adapter": "core.inference.langid_rules:ScriptLangId"}
    ]}}  # fmt: skip

    done = inferq(
        "models", "evaluate", "langid", "--data", str(data), "--metrics-json", str(metrics),
        INFERQ_TASKS=json.dumps(rules_only),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    figures = json.loads(metrics.read_text())["rules"]
    assert figures["version"] == ScriptLangId.current_version()
    assert (figures["accuracy"], figures["undecided"], figures["decided_accuracy"]) == (0.5, 2, 1.0)
    assert "unicode-script" in done.stdout and "0.5000" in done.stdout


def test_evaluating_a_task_without_trained_artefacts_refuses_an_artefact(tmp_path: Path) -> None:
    done = inferq("models", "evaluate", "ner", "--artefact", str(tmp_path))

    assert done.returncode != 0
    assert "has no trained artefacts" in done.stderr
