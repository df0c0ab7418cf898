"""Check a labelled data folder and copy it, fingerprinted, to where training reads it.

The `prepare` stage of dvc.yaml. Each split (`sentence<TAB>label` TSV with a header, as SST-2
ships) is read one line at a time, checked and copied byte for byte in the same pass, so the copy's
sha256 is the source's and a model card's data hash names the shipped file. What is checked: UTF-8,
the header, exactly two columns, a 0/1 label, and text that `normalise` (the one preprocessing
path) does not reduce to nothing. The manifest records each split's sha256, rows and label counts,
and how many dev and test texts also occur in train after `normalise` (possible leakage;
reported, not refused: short texts recur across splits, 75 of dev's and none of test's in the
shipped SST-2).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.inference.evaluation import SENTIMENT_LABELS
from core.inference.preprocess import PREPROCESS_VERSION, normalise

SPLITS = ("train", "dev", "test")
HEADER = "sentence\tlabel"
MANIFEST_FILE = "manifest.json"


class DatasetError(ValueError):
    """A data file breaks the format; the message names the file and line."""


def prepare_dataset(source: Path, dest: Path) -> dict[str, Any]:
    """Check `source`/{train,dev,test}.tsv, copy them to `dest` (replaced) with a manifest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".prepare-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        splits = {name: _copy_checked(source / f"{name}.tsv", staging) for name in SPLITS}
        manifest = {
            "source": str(source),
            "preprocess_version": PREPROCESS_VERSION,
            "splits": splits,
            "in_train": _overlap(staging, ("dev", "test")),
        }
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (staging / MANIFEST_FILE).write_text(text, encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _copy_checked(path: Path, out_dir: Path) -> dict[str, Any]:
    """Copy `path` into `out_dir` line by line, checking each; its fingerprint and counts."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    digest = hashlib.sha256()
    labels: Counter[str] = Counter()
    with path.open("rb") as source, (out_dir / path.name).open("wb") as copy:
        for number, raw in enumerate(source, start=1):
            digest.update(raw)
            copy.write(raw)
            line = _decoded(raw, path, number)
            if number == 1:
                if line != HEADER:
                    raise DatasetError(f"{path}:1: header {line!r}, expected {HEADER!r}")
                continue
            labels[SENTIMENT_LABELS[_label(line, path, number)]] += 1
    rows = sum(labels.values())
    if rows == 0:
        raise DatasetError(f"{path}: no rows after the header")
    return {
        "file": path.name,
        "sha256": digest.hexdigest(),
        "rows": rows,
        "labels": {name: labels[name] for name in SENTIMENT_LABELS},
    }


def _decoded(raw: bytes, path: Path, number: int) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}:{number}: not UTF-8 ({exc.reason})") from None
    if "\x00" in line:
        raise DatasetError(f"{path}:{number}: NUL character")
    return line.rstrip("\r\n")


def _label(line: str, path: Path, number: int) -> int:
    fields = line.split("\t")
    if len(fields) != 2:
        raise DatasetError(f"{path}:{number}: {len(fields)} columns, expected 2 (text, label)")
    text, label = fields
    if label not in ("0", "1"):
        raise DatasetError(f"{path}:{number}: label {label!r}, expected 0 or 1")
    if not normalise(text):
        raise DatasetError(f"{path}:{number}: empty text")
    return int(label)


def _overlap(folder: Path, splits: tuple[str, ...]) -> dict[str, int]:
    """Per split, how many of its distinct normalised texts train also holds."""
    held = {name: set(_texts(folder / f"{name}.tsv")) for name in splits}
    found: dict[str, set[str]] = {name: set() for name in splits}
    for text in _texts(folder / "train.tsv"):  # train streams; dev and test are small sets
        for name, texts in held.items():
            if text in texts:
                found[name].add(text)
    return {name: len(found[name]) for name in splits}


def _texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        next(handle, None)
        for line in handle:
            yield normalise(line.rsplit("\t", 1)[0])
