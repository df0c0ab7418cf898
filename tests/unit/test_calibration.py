"""Temperature scaling: the fit and the ECE on cases worked out by hand, and the light tier (cheap
to load for real) serving, versioning and refusing calibrations. The torch and ONNX primary tiers'
calibrated scores are held in test_transformer.py and test_onnx_transformer.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.inference.calibration import (
    CALIBRATION_FILE,
    StaleCalibrationError,
    calibrate_sentiment,
    ece,
    fit_temperature,
    nll,
    read_temperature,
    scaled_probabilities,
    write_calibration,
)
from core.inference.evaluation import DEFAULT_SST2_DIR, read_sst2
from core.inference.light import (
    CARD_FILE,
    DEFAULT_LIGHT_ARTEFACT_DIR,
    TfidfSentiment,
    light_artefact_version,
    light_weights_version,
)
from core.inference.transformer import (
    SENTIMENT_ARTEFACT_DIR,
    artefact_files,
    artefact_version,
    weights_version,
)

TEXTS = ["a gorgeous , witty film", "dull and far too long", "it is a film", "not bad at all"]


def light_copy(tmp_path: Path) -> Path:
    return Path(
        shutil.copytree(
            DEFAULT_LIGHT_ARTEFACT_DIR, tmp_path / "light", ignore=shutil.ignore_patterns("drift*")
        )
    )


def calibrate_light_copy(directory: Path, temperature: float) -> None:
    record = {"temperature": temperature, "fitted_for": light_weights_version(directory)}
    write_calibration(directory, record)


# --- the numbers ---------------------------------------------------------------------------------


def test_the_fitted_temperature_is_the_nll_minimum_worked_out_by_hand() -> None:
    # Four inputs with logits (0, 2), three of them positive: the NLL is least where
    # sigmoid(2 / T) = 3/4, i.e. 2 / T = ln 3, T = 2 / ln 3 = 1.8205 (d/dT of the NLL is 0 there).
    logits = np.array([[0.0, 2.0]] * 4)
    labels = [1, 1, 1, 0]
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2 / math.log(3), rel=1e-5)
    assert nll(logits, labels, temperature) < nll(logits, labels, temperature * 1.01)
    assert nll(logits, labels, temperature) < nll(logits, labels, temperature / 1.01)


def test_an_overconfident_model_gets_a_temperature_above_one() -> None:
    # Right only 60 % of the time at 95 % confidence: scaling must soften it (T > 1).
    logits = np.array([[0.0, math.log(19)]] * 10)
    temperature = fit_temperature(logits, [1] * 6 + [0] * 4)
    assert temperature == pytest.approx(math.log(19) / math.log(1.5), rel=1e-5)
    assert temperature > 1


def test_ece_of_a_hand_made_case() -> None:
    # Confidences 0.9, 0.9 (one right) and 0.6, 0.6 (both right): two bins, each half the inputs,
    # gaps |0.5 - 0.9| and |1.0 - 0.6|: ECE = 0.5 * 0.4 + 0.5 * 0.4 = 0.4.
    sure, unsure = [0.0, math.log(9)], [math.log(1.5), 0.0]  # positive 0.9, negative 0.6
    logits = np.array([sure, sure, unsure, unsure])
    labels = [1, 0, 0, 0]
    assert ece(logits, labels) == pytest.approx(0.4, abs=1e-12)
    # Eight of ten right at 0.8: calibrated, ECE 0.
    eighty = np.array([[0.0, math.log(4)]] * 10)
    assert ece(eighty, [1] * 8 + [0] * 2) == pytest.approx(0.0, abs=1e-12)


def test_scaled_probabilities_are_the_softmax_of_logits_over_t() -> None:
    (row,) = scaled_probabilities([[0.0, 2.0]], 2.0)
    assert row == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)], abs=1e-15)
    assert scaled_probabilities([], 2.0) == []


# --- the light tier ------------------------------------------------------------------------------


def test_the_light_tier_serves_sigmoid_of_its_decision_over_t(tmp_path: Path) -> None:
    directory = light_copy(tmp_path)
    calibrate_light_copy(directory, 0.7)
    served = TfidfSentiment.load(directory)
    raw = TfidfSentiment.load(directory, calibrated=False)  # the decision from the same files
    temperature = json.loads((directory / CALIBRATION_FILE).read_text())["temperature"]
    for text, prediction in zip(TEXTS, served.predict(TEXTS), strict=True):
        positive = 1 / (1 + math.exp(-raw.decision(text) / temperature))
        assert prediction.scores == pytest.approx(
            {"negative": 1 - positive, "positive": positive}, abs=1e-12
        )
        assert prediction.label == raw.predict([text])[0].label  # T never moves a label
    assert served.predict(TEXTS) != raw.predict(TEXTS)


def test_changing_calibration_changes_the_version(tmp_path: Path) -> None:
    directory = light_copy(tmp_path)
    uncalibrated = light_artefact_version(directory)
    assert uncalibrated == light_weights_version(directory)
    calibrate_light_copy(directory, 0.7)
    first = light_artefact_version(directory)
    calibrate_light_copy(directory, 0.8)
    assert len({uncalibrated, first, light_artefact_version(directory)}) == 3
    assert TfidfSentiment.load(directory).version == light_artefact_version(directory)
    assert light_weights_version(directory) == uncalibrated

    primary = tmp_path / "sentiment"
    primary.mkdir()
    for name in (*artefact_files(SENTIMENT_ARTEFACT_DIR), CALIBRATION_FILE):
        shutil.copy2(SENTIMENT_ARTEFACT_DIR / name, primary / name)
    shipped = artefact_version(primary)
    record = json.loads((primary / CALIBRATION_FILE).read_text())
    write_calibration(primary, {**record, "temperature": record["temperature"] + 0.01})
    assert artefact_version(primary) != shipped
    (primary / CALIBRATION_FILE).unlink()
    assert artefact_version(primary) == weights_version(primary) != shipped


def test_a_calibration_fitted_for_other_weights_is_refused(tmp_path: Path) -> None:
    directory = light_copy(tmp_path)
    write_calibration(directory, {"temperature": 0.7, "fitted_for": "0123456789ab"})
    with pytest.raises(StaleCalibrationError, match="models calibrate"):
        TfidfSentiment.load(directory)
    assert TfidfSentiment.load(directory, calibrated=False).temperature == 1.0


def test_calibrate_fits_on_dev_and_writes_what_the_tier_then_serves(tmp_path: Path) -> None:
    directory = light_copy(tmp_path)
    before = light_artefact_version(directory)
    (result,) = calibrate_sentiment(
        DEFAULT_SST2_DIR, ["fallback"], artefact_dirs={"fallback": directory}
    )
    dev = read_sst2(DEFAULT_SST2_DIR / "dev.tsv")
    raw = TfidfSentiment.load(directory, calibrated=False)
    expected = fit_temperature(np.asarray(raw.logits([t for t, _ in dev])), [y for _, y in dev])
    assert result["temperature"] == pytest.approx(expected, abs=1e-4)
    assert read_temperature(directory, light_weights_version(directory)) == result["temperature"]
    assert result["old_version"] == before != result["new_version"]
    assert TfidfSentiment.load(directory).version == result["new_version"]
    card = json.loads((directory / CARD_FILE).read_text())
    assert card["version"] == result["new_version"]  # the card names the served version
    assert result["fit"]["nll_after"] <= result["fit"]["nll_before"]
    assert result["test"]["n"] == 872


def test_the_shipped_primary_calibration_fits_the_shipped_weights() -> None:
    record = json.loads((SENTIMENT_ARTEFACT_DIR / CALIBRATION_FILE).read_text())
    assert record["fitted_for"] == weights_version(SENTIMENT_ARTEFACT_DIR)
    assert record["temperature"] != 1.0
    assert record["sst2_test"]["ece_after"] <= 0.05
