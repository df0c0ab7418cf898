"""`inferq models train --arch` and `models evaluate` as a user runs them: in a subprocess, into
a temporary folder, with what CI can afford (logreg, and an LSTM on 300 rows with tiny dims)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.inference.strategies.run import CARD_FILE, load_artefact

CARD_FIELDS = {"arch", "data", "metrics", "name", "params", "seed", "task", "version"}


def inferq(*args: str) -> subprocess.CompletedProcess[str]:
    wide = {**os.environ, "COLUMNS": "250"}  # rich wraps error boxes at the terminal width
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, check=False, env=wide
    )


def train(arch: str, out_dir: Path, *extra: str) -> Path:
    done = inferq("models", "train", "sentiment", "--arch", arch, "--out-dir", str(out_dir), *extra)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])  # stdout is the artefact's folder


def test_logreg_trains_through_the_cli_into_a_versioned_folder_with_a_card(
    tmp_path: Path,
) -> None:
    artefact = train("logreg", tmp_path)

    card = json.loads((artefact / CARD_FILE).read_text())
    assert set(card) >= CARD_FIELDS and artefact == tmp_path / card["version"]
    assert card["metrics"]["sst2_test"]["accuracy"] > 0.75  # SST-2 test; 81.8 % when measured
    evaluated = inferq("models", "evaluate", "sentiment", "--artefact", str(artefact))
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"{card['metrics']['sst2_test']['accuracy']:.4f}" in evaluated.stdout


def test_a_tiny_lstm_trains_through_the_cli_and_its_artefact_loads_and_predicts(
    tmp_path: Path,
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("lstm:\n  hidden_size: 8\n  epochs: 1\n  max_rows: 300\n")

    artefact = train("lstm", tmp_path / "out", "--params", str(params), "--seed", "7")

    card = json.loads((artefact / CARD_FILE).read_text())
    assert set(card) >= CARD_FIELDS
    assert card["params"]["hidden_size"] == 8 and card["seed"] == 7
    assert load_artefact(artefact).predict(["what a film"])[0].label in ("negative", "positive")
    evaluated = inferq("models", "evaluate", "sentiment", "--artefact", str(artefact))
    assert evaluated.returncode == 0, evaluated.stderr
    assert card["version"] in evaluated.stdout


def test_evaluate_scores_a_users_own_jsonl(tmp_path: Path) -> None:
    artefact = train("logreg", tmp_path / "out")
    data = tmp_path / "mine.jsonl"
    rows = [
        {"text": "a wonderful, moving film", "label": "positive"},
        {"text": "a dull and tedious mess", "label": "negative"},
        {"text": "brilliant acting and a great story", "label": 1},
        {"text": "boring , lifeless and far too long", "label": 0},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    done = inferq(
        "models", "evaluate", "sentiment", "--artefact", str(artefact), "--data", str(data)
    )

    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "logreg" in line)
    assert "1.0000" in row and " 4 " in row  # all four right, n = 4


def test_an_unknown_arch_fails_with_the_known_ones_listed(tmp_path: Path) -> None:
    done = inferq("models", "train", "sentiment", "--arch", "gpt", "--out-dir", str(tmp_path))

    assert done.returncode == 2
    assert "known: logreg, lstm, transformer" in done.stderr
    assert not any(tmp_path.iterdir())
