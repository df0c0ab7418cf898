"""The training-strategy factory, the lazy data readers, the scores model cards carry, and the
versioned artefacts `train_artefact` writes (logreg and a tiny LSTM on a few hundred rows)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.inference.evaluation import (
    DEFAULT_SST2_DIR,
    batched,
    expected_calibration_error,
    iter_labelled,
    macro_f1,
)
from core.inference.strategies import STRATEGIES, UnknownArchitecture, get_strategy
from core.inference.strategies.base import recipe_from_params, select_params
from core.inference.strategies.data import shuffled, take
from core.inference.strategies.run import CARD_FILE, load_artefact, train_artefact

TINY_LSTM = {"hidden_size": 4, "epochs": 1, "batch_size": 32, "shuffle_buffer": 64}


def small_sst2(directory: Path, train_rows: int = 300, test_rows: int = 60) -> Path:
    """The first rows of SST-2 train and test, as a data folder the strategies read."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        lines = (DEFAULT_SST2_DIR / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        (directory / f"{split}.tsv").write_text("\n".join(lines[: rows + 1]) + "\n", "utf-8")
    return directory


# --- the factory ------------------------------------------------------------------------------


def test_the_factory_knows_the_three_architectures() -> None:
    assert sorted(STRATEGIES) == ["logreg", "lstm", "transformer"]
    assert {name: get_strategy(name).arch for name in STRATEGIES} == {n: n for n in STRATEGIES}


def test_an_unknown_architecture_is_an_error_that_lists_the_known_ones() -> None:
    with pytest.raises(UnknownArchitecture) as raised:
        get_strategy("bert-large")

    assert (
        str(raised.value) == "unknown architecture 'bert-large'; known: logreg, lstm, transformer"
    )


def test_params_override_recipe_fields_and_unknown_ones_are_refused() -> None:
    recipe = recipe_from_params(get_strategy("lstm").default_recipe(), {"hidden_size": 16})
    assert recipe.hidden_size == 16

    with pytest.raises(ValueError, match="unknown parameter\\(s\\) hiden_size"):
        recipe_from_params(get_strategy("lstm").default_recipe(), {"hiden_size": 16})


def test_a_params_file_may_hold_one_section_per_architecture() -> None:
    document = {"lstm": {"epochs": 2}, "logreg": {"min_df": 3}}

    assert select_params(document, "logreg") == {"min_df": 3}
    assert select_params({"epochs": 2}, "lstm") == {"epochs": 2}


# --- lazy readers ---------------------------------------------------------------------------


def test_a_labelled_file_is_read_one_row_at_a_time(tmp_path: Path) -> None:
    """Rows past what was consumed are never parsed: a bad line after them raises nothing
    until the reader gets there."""
    path = tmp_path / "big.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\n" + "x\tNOT-A-LABEL\n" * 10_000, "utf-8")
    rows = iter_labelled(path)

    assert [next(rows), next(rows)] == [("good", 1), ("bad", 0)]
    with pytest.raises(ValueError, match="NOT-A-LABEL"):
        next(rows)


def test_batches_pull_only_as_many_rows_as_they_hand_out() -> None:
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for number in range(1_000_000):
            pulled.append(number)
            yield number

    first = next(batched(source(), 3))

    assert first == [0, 1, 2]
    assert pulled == [0, 1, 2]


def test_the_shuffle_buffer_holds_at_most_its_size_and_loses_nothing() -> None:
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for number in range(1_000):
            pulled.append(number)
            yield number

    stream = shuffled(source(), 10, random.Random(1))
    first = next(stream)

    assert len(pulled) == 11 and first < 10  # ten buffered, the eleventh displaced one of them
    assert sorted([first, *stream]) == list(range(1_000))
    assert list(take(range(10), 0)) == list(range(10))


def test_jsonl_labels_may_be_names_or_indices(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"text": "great", "label": "positive"}\n\n{"text": "meh", "label": 0}\n')

    assert list(iter_labelled(path)) == [("great", 1), ("meh", 0)]


# --- scores -------------------------------------------------------------------------------


def test_macro_f1_is_the_unweighted_mean_of_each_label_f1() -> None:
    # label 0: TP 2, FP 1, FN 0 -> F1 4/5; label 1: TP 1, FP 0, FN 1 -> F1 2/3
    assert macro_f1([0, 0, 1, 1], [0, 0, 0, 1], 2) == pytest.approx((4 / 5 + 2 / 3) / 2)


def test_macro_f1_counts_a_label_never_predicted_nor_present_as_zero() -> None:
    assert macro_f1([0, 0], [0, 0], 2) == pytest.approx(0.5)


def test_ece_weights_each_bin_gap_by_its_share_of_predictions() -> None:
    # bin (0.933, 1]: 0.95 and 0.95, one right -> gap 0.45; bin (0.6, 0.667]: 0.65 right -> 0.35
    confidences = [0.95, 0.95, 0.65, 0.65]
    correct = [True, False, True, True]

    assert expected_calibration_error(confidences, correct) == pytest.approx(
        (2 * 0.45 + 2 * 0.35) / 4
    )


def test_ece_of_a_perfectly_calibrated_model_is_zero() -> None:
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.6] * 5, [True, True, True, False, False]) == 0.0


# --- versioned artefacts ----------------------------------------------------------------------


def test_a_logreg_run_writes_a_card_with_data_hash_params_seed_and_metrics(tmp_path: Path) -> None:
    data = small_sst2(tmp_path / "data")

    trained = train_artefact("sentiment", "logreg", data_dir=data, out_root=tmp_path / "out")

    card = json.loads((trained.path / CARD_FILE).read_text())
    assert trained.path.name == card["version"]
    assert card["arch"] == "logreg" and card["seed"] == 13 and card["params"]["min_df"] == 2
    assert card["data"]["train"]["lines"] == 301 and len(card["data"]["train"]["sha256"]) == 64
    assert set(card["metrics"]["sst2_test"]) == {
        "accuracy",
        "macro_f1",
        "ece",
        "n",
        "seconds_per_1000",
    }
    assert card["metrics"]["sst2_test"]["n"] == 60
    assert load_artefact(trained.path).version == card["version"]


def test_the_same_seed_and_data_give_the_same_logreg_version(tmp_path: Path) -> None:
    data = small_sst2(tmp_path / "data")

    first = train_artefact("sentiment", "logreg", data_dir=data, out_root=tmp_path / "a")
    second = train_artefact("sentiment", "logreg", data_dir=data, out_root=tmp_path / "b")

    assert first.path.name == second.path.name


def test_other_data_gives_another_logreg_version(tmp_path: Path) -> None:
    first = train_artefact(
        "sentiment", "logreg", data_dir=small_sst2(tmp_path / "d1", 300), out_root=tmp_path / "a"
    )
    second = train_artefact(
        "sentiment", "logreg", data_dir=small_sst2(tmp_path / "d2", 400), out_root=tmp_path / "b"
    )

    assert first.path.name != second.path.name


def test_another_seed_gives_another_lstm_version(tmp_path: Path) -> None:
    """The seed drives the LSTM's initialisation and shuffle; lbfgs (logreg) ignores seeds, so
    there the version is rightly the same: it is a hash of what was learnt."""
    data = small_sst2(tmp_path / "data", 100, 20)
    runs = [
        train_artefact(
            "sentiment", "lstm", data_dir=data, out_root=tmp_path / "out", params=TINY_LSTM, seed=s
        )
        for s in (1, 2)
    ]

    assert runs[0].path.name != runs[1].path.name
    assert runs[0].card["seed"] == 1 and runs[1].card["seed"] == 2


def test_an_lstm_artefact_loads_as_a_tier_and_predicts(tmp_path: Path) -> None:
    data = small_sst2(tmp_path / "data", 100, 20)
    trained = train_artefact(
        "sentiment", "lstm", data_dir=data, out_root=tmp_path / "out", params=TINY_LSTM
    )

    adapter = load_artefact(trained.path)
    predictions = adapter.predict(["a gorgeous film", "", "dull\tand  tedious"])

    assert adapter.version == trained.path.name
    assert [p.label in ("negative", "positive") for p in predictions] == [True] * 3
    assert all(p.scores and sum(p.scores.values()) == pytest.approx(1.0) for p in predictions)


def test_the_strategies_import_neither_torch_nor_scikit_learn() -> None:
    """The CLI and workers import the registry of strategies; training pulls its stack in."""
    import subprocess
    import sys

    code = (
        "import sys, core.inference.strategies, core.inference.strategies.run, core.inference.lstm;"
        "heavy = {'torch', 'sklearn'} & set(sys.modules); assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
