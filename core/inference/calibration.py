"""Temperature scaling of the learned `sentiment` tiers, and the expected calibration error.

A classifier's softmax is often more (or less) sure than it is right: on SST-2 test the primary
tier says 0.97 on average while it is right 88 % of the time. Temperature scaling (Guo et al.,
2017) divides the logits by one number T fitted to minimise the negative log-likelihood on held-out
labels: labels never change (argmax is unmoved), confidences become probabilities one can act on.

Each tier's T lives in ``calibration.json`` beside its weights, with what it was fitted for (the
version of the scoring files without it) and the figures of the fit. The file is one of the
artefact's scoring files: a calibrated model is a different model, with its own version and so its
own cached results. An artefact without the file serves T = 1, as before calibration existed.

numpy is imported inside functions: the registry imports the adapters, and through them this
module, in processes (``inferq`` commands, the API) that never compute a score.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from core.inference.evaluation import expected_calibration_error

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Floats = npt.NDArray[np.float64]

CALIBRATION_FILE = "calibration.json"
# Bounds of the search, far outside any sensible T: one at a bound means the fit split is odd.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
# ln T to this precision, about 1e-6 relative in T: far below what moves a score in print.
SEARCH_TOLERANCE = 1e-7
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class StaleCalibrationError(RuntimeError):
    """calibration.json was fitted for other weights than those beside it."""


class Fit(TypedDict):
    """NLL and ECE of one labelled split, before (T = 1) and after the fitted temperature."""

    n: int
    accuracy: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float


# --------------------------------------------------------------------------------- the numbers


def log_softmax(logits: Floats, temperature: float = 1.0) -> Floats:
    import numpy as np

    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    result: Floats = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def softmax(logits: Floats, temperature: float = 1.0) -> Floats:
    """softmax(logits / T) per row, in float64."""
    import numpy as np

    result: Floats = np.exp(log_softmax(logits, temperature))
    return result


def nll(logits: Floats, labels: Sequence[int], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / T)."""
    import numpy as np

    rows = log_softmax(logits, temperature)
    return float(-rows[np.arange(len(rows)), np.asarray(labels)].mean())


def fit_temperature(logits: Floats, labels: Sequence[int]) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises nll(logits, labels, T).

    Golden-section search over ln T. It finds the minimum because the NLL is convex in 1/T (a
    log-sum-exp of linear functions of 1/T, minus a linear one), hence unimodal in ln T, a
    monotone function of 1/T. numpy only: scipy is not in every image that serves."""
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)

    def loss(log_t: float) -> float:
        return nll(logits, labels, math.exp(log_t))

    inner_low, inner_high = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    loss_low, loss_high = loss(inner_low), loss(inner_high)
    while high - low > SEARCH_TOLERANCE:
        if loss_low <= loss_high:  # the minimum is left of inner_high
            high, inner_high, loss_high = inner_high, inner_low, loss_low
            inner_low = high - _GOLDEN * (high - low)
            loss_low = loss(inner_low)
        else:
            low, inner_low, loss_low = inner_low, inner_high, loss_high
            inner_high = low + _GOLDEN * (high - low)
            loss_high = loss(inner_high)
    return math.exp((low + high) / 2.0)


def ece(logits: Floats, labels: Sequence[int], temperature: float = 1.0) -> float:
    """ECE (15 equal-width bins of the top-class confidence) of softmax(logits / T)."""
    import numpy as np

    probabilities = softmax(logits, temperature)
    predicted = probabilities.argmax(axis=-1)
    correct = predicted == np.asarray(labels)
    return expected_calibration_error(probabilities.max(axis=-1).tolist(), correct.tolist())


def fit_report(logits: Floats, labels: Sequence[int], temperature: float) -> Fit:
    """The figures calibration.json and `inferq models calibrate` show for one split."""
    import numpy as np

    accuracy = float((np.asarray(logits).argmax(axis=-1) == np.asarray(labels)).mean())
    return Fit(
        n=len(labels),
        accuracy=round(accuracy, 4),
        nll_before=round(nll(logits, labels), 4),
        nll_after=round(nll(logits, labels, temperature), 4),
        ece_before=round(ece(logits, labels), 4),
        ece_after=round(ece(logits, labels, temperature), 4),
    )


def scaled_probabilities(rows: Sequence[Sequence[float]], temperature: float) -> list[list[float]]:
    """softmax(row / T) of each row of logits: the scores a calibrated tier serves."""
    import numpy as np

    if not rows:
        return []
    probabilities: list[list[float]] = softmax(np.asarray(rows), temperature).tolist()
    return probabilities


# ---------------------------------------------------------------------------------- the file


def read_calibration(directory: Path) -> dict[str, Any] | None:
    path = directory / CALIBRATION_FILE
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return record


def read_temperature(directory: Path, weights_version: str) -> float:
    """The T to serve `directory` with: 1 without calibration.json; an error when the file was
    fitted for other weights (retrained in place without recalibrating), because its T would
    mis-scale scores silently."""
    record = read_calibration(directory)
    if record is None:
        return 1.0
    if record["fitted_for"] != weights_version:
        raise StaleCalibrationError(
            f"{directory / CALIBRATION_FILE} was fitted for weights {record['fitted_for']}, "
            f"the weights there are {weights_version}: run `inferq models calibrate sentiment`"
        )
    temperature = float(record["temperature"])
    if not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise ValueError(f"{directory / CALIBRATION_FILE}: temperature {temperature} out of range")
    return temperature


def write_calibration(directory: Path, record: dict[str, Any]) -> Path:
    """Sorted, indented JSON without timestamps (refitting the same logits rewrites the same
    bytes, hence the same version), replaced in one rename so no reader sees half a file."""
    path = directory / CALIBRATION_FILE
    aside = path.with_name(f".{CALIBRATION_FILE}.{os.getpid()}.tmp")
    aside.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(aside, path)
    return path


# ------------------------------------------------------------------------------ the sentiment tiers


class TierCalibration(TypedDict):
    tier: str
    model: str
    temperature: float
    old_version: str  # served before this fit
    new_version: str  # served after it (the same when not written)
    written: bool
    fit: Fit  # on the fit split
    test: Fit  # on SST-2 test.tsv, the report set: never fitted on


def calibrate_sentiment(
    data_dir: Path,
    tiers: Sequence[str],
    *,
    write: bool = True,
    artefact_dirs: Mapping[str, Path] | None = None,
) -> list[TierCalibration]:
    """Fit T on `data_dir`/dev.tsv for each learned `sentiment` tier in `tiers` ("primary",
    "fallback"), report dev and test before/after, and (`write`) store calibration.json in the
    tier's artefact (the shipped one unless `artefact_dirs` names another).

    The primary's logits come from the torch fp32 model, which the ONNX twin matches to 4e-6."""
    from core.inference.evaluation import read_sst2
    from core.inference.light import DEFAULT_LIGHT_ARTEFACT_DIR, TfidfSentiment
    from core.inference.light import light_artefact_version as light_version
    from core.inference.transformer import SENTIMENT_ARTEFACT_DIR, SentimentTransformer
    from core.inference.transformer import artefact_version as primary_version

    dev, test = read_sst2(data_dir / "dev.tsv"), read_sst2(data_dir / "test.tsv")
    shipped = {"primary": SENTIMENT_ARTEFACT_DIR, "fallback": DEFAULT_LIGHT_ARTEFACT_DIR}
    directories = {**shipped, **(artefact_dirs or {})}
    results = []
    for tier in tiers:
        if tier == "primary":
            directory, version_of = directories[tier], primary_version
            model: Any = SentimentTransformer.load(
                directory, device="cpu", precision="fp32", calibrated=False
            )
        elif tier == "fallback":
            directory, version_of = directories[tier], light_version
            model = TfidfSentiment.load(directory, calibrated=False)
        else:
            raise ValueError(f"sentiment's learned tiers are primary and fallback, not {tier!r}")
        results.append(_calibrate_tier(tier, model, directory, version_of, dev, test, write))
    return results


def _calibrate_tier(
    tier: str,
    model: Any,
    directory: Path,
    version_of: Any,
    dev: list[tuple[str, int]],
    test: list[tuple[str, int]],
    write: bool,
) -> TierCalibration:
    import numpy as np

    old_version = str(version_of(directory))
    dev_logits = np.asarray(model.logits([text for text, _ in dev]))
    dev_labels = [label for _, label in dev]
    temperature = round(fit_temperature(dev_logits, dev_labels), 4)
    test_logits = np.asarray(model.logits([text for text, _ in test]))
    fit = fit_report(dev_logits, dev_labels, temperature)
    on_test = fit_report(test_logits, [label for _, label in test], temperature)
    if write:
        write_calibration(
            directory,
            {
                "temperature": temperature,
                "fitted_for": model.version,  # the weights' version: loaded with calibrated=False
                "method": "temperature scaling: T minimising the mean NLL of softmax(logits / T), "
                "golden-section search over ln T (numpy)",
                "fit": {"split": "SST-2 dev.tsv (phrases)", **fit},
                "sst2_test": {"split": "SST-2 test.tsv (sentences), not fitted on", **on_test},
                "ece_bins": 15,
            },
        )
        _refresh_card_version(directory, old_version, str(version_of(directory)))
    return TierCalibration(
        tier=tier,
        model=model.name,
        temperature=temperature,
        old_version=old_version,
        new_version=str(version_of(directory)),
        written=write,
        fit=fit,
        test=on_test,
    )


def _refresh_card_version(directory: Path, old: str, new: str) -> None:
    """The light tier's card.json names the version it describes: keep it the served one."""
    card_path = directory / "card.json"
    if not card_path.is_file():
        return
    card = json.loads(card_path.read_text(encoding="utf-8"))
    if card.get("version") == old != new:
        card["version"] = new
        card_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
