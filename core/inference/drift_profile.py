"""Reference profiles for drift detection: what a tier's outputs look like on held-out data.

Each artefact that can carry one gets ``drift_profile.json`` beside its files (its content hash,
and so its version, covers only the scoring files: the profile never changes the version). The
profile is made from held-out whole sentences, SST-2's test.tsv, which no tier trained on
(train.tsv and dev.tsv are parse-tree phrases, half of them under 7 words: traffic of whole texts
would look drifted against them). test.tsv is split in two by a seeded shuffle: the profile is
made from one half, and the other half stays unseen, so ``bench/drift.py`` and the tests can check
for false alarms against the profile that ships.

The signal summaries and the detector are in ``core.telemetry.drift``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.inference.engine import ModelAdapter
from core.inference.evaluation import DEFAULT_SST2_DIR, read_sst2
from core.inference.registry import adapter_class, get_task
from core.telemetry.drift import PROFILE_DIRS, PROFILE_FILE, item_record, summarise

SPLIT_SEED = 13
_NUMBER_LIST = re.compile(r"\[[-\d\s,.e]*\]")


def held_out_split(data_dir: Path = DEFAULT_SST2_DIR) -> tuple[list[str], list[str]]:
    """(profile half, unseen half) of SST-2 test.tsv's sentences, the same on every run."""
    texts = [text for text, _ in read_sst2(data_dir / "test.tsv")]
    random.Random(SPLIT_SEED).shuffle(texts)
    middle = len(texts) // 2
    return texts[:middle], texts[middle:]


def build_profile(model: ModelAdapter, texts: list[str], *, task: str) -> dict[str, Any]:
    records = [
        item_record(prediction.label, prediction.score, text)
        for prediction, text in zip(model.predict(texts), texts, strict=True)
        if prediction.label is not None and prediction.score is not None
    ]
    source = f"SST-2 test.tsv, profile half ({len(texts)} sentences; seeded shuffle {SPLIT_SEED})"
    return {
        "task": task,
        "model": model.name,
        "version": model.version,
        **summarise(records, source),
    }


def write_profile(directory: Path, profile: dict[str, Any]) -> Path:
    """Indented JSON with every list of numbers on one line: small, and diffs by row."""
    text = json.dumps(profile, indent=2, sort_keys=True)
    text = _NUMBER_LIST.sub(
        lambda match: json.dumps(json.loads(match.group(0)), separators=(",", ":")), text
    )
    path = directory / PROFILE_FILE
    path.write_text(text + "\n", encoding="utf-8")
    return path


def profile_task(
    task: str,
    *,
    device: str = "cpu",
    data_dir: Path = DEFAULT_SST2_DIR,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Profile every tier of `task` whose artefact can carry one; returns the files written."""
    if task != "sentiment":
        raise ValueError(f"only 'sentiment' has held-out data to profile, not {task!r}")
    texts, _unseen = held_out_split(data_dir)
    written = []
    for tier in get_task(task).chain:
        directory = PROFILE_DIRS.get(tier.adapter)
        if directory is None:
            continue
        model: ModelAdapter = adapter_class(tier).load(device=device)
        profile = build_profile(model, texts, task=task)
        target = out_dir / directory.name if out_dir else directory
        target.mkdir(parents=True, exist_ok=True)
        written.append(write_profile(target, profile))
        if progress is not None:
            progress(f"{task} {tier.tier} ({model.name} {model.version}): {written[-1]}")
    return written
