"""MLflow tracking of `inferq models train --arch`, on a real SQLite store in a temporary folder.

logreg is trained once for the module through the CLI (a subprocess, as a user runs it); the
tests then read the store back with MLflow's own client.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from core.inference import tracking
from core.inference.evaluation import DEFAULT_SST2_DIR
from core.inference.strategies.run import CARD_FILE, load_artefact

TASK = "sentiment"
MODEL = "inferq-sentiment"
# A smaller vocabulary and fewer solver steps: for the tests that only need some artefact.
QUICK_LOGREG = "logreg:\n  ngram_max: 1\n  max_features: 2000\n  max_iter: 100\n"


@dataclass(frozen=True)
class Trained:
    uri: str
    artefact: Path
    card: dict[str, Any]


def inferq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "250", **env}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env=full_env,
    )


def train_logreg(out_dir: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return inferq(
        "models", "train", TASK, "--arch", "logreg", "--out-dir", str(out_dir), *extra, **env
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    done = train_logreg(root / "models", MLFLOW_TRACKING_URI=uri, INFERQ_TRACKING="true")
    assert done.returncode == 0, done.stderr
    artefact = Path(done.stdout.strip().splitlines()[-1])
    card = json.loads((artefact / CARD_FILE).read_text())
    return Trained(uri, artefact, card)


@pytest.fixture
def client(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    monkeypatch.setenv("INFERQ_TRACKING", "true")
    return MlflowClient(tracking_uri=trained.uri, registry_uri=trained.uri)


def the_run(client: MlflowClient) -> Any:
    experiment = client.get_experiment_by_name("inferq-sentiment")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_a_training_run_logs_the_cards_recipe_seed_data_hash_and_metrics(
    client: MlflowClient, trained: Trained
) -> None:
    run = the_run(client)
    card = trained.card

    assert run.info.status == "FINISHED"
    for field, value in card["params"].items():
        assert run.data.params[field] == str(value), field
    assert run.data.params["seed"] == str(card["seed"]) == "13"
    assert run.data.params["arch"] == "logreg"
    shipped = hashlib.sha256((DEFAULT_SST2_DIR / "train.tsv").read_bytes()).hexdigest()
    assert run.data.params["data_sha256"] == shipped
    for name in ("accuracy", "macro_f1", "ece", "seconds_per_1000"):
        assert run.data.metrics[name] == pytest.approx(card["metrics"]["sst2_test"][name])
    assert run.data.metrics["accuracy"] > 0.8
    assert run.data.tags["inferq_version"] == card["version"]
    assert run.data.tags["arch"] == "logreg" and run.data.tags["task"] == TASK


def test_the_run_keeps_the_artefact_folder_and_the_card(
    client: MlflowClient, trained: Trained, tmp_path: Path
) -> None:
    run_id = the_run(client).info.run_id

    top = {item.path for item in client.list_artifacts(run_id)}
    inside = {Path(item.path).name for item in client.list_artifacts(run_id, "artefact")}

    assert top == {"artefact", "model_card.json"}
    assert inside == {path.name for path in trained.artefact.iterdir()}
    card = Path(client.download_artifacts(run_id, "model_card.json", str(tmp_path)))
    assert json.loads(card.read_text()) == trained.card


def test_the_artefact_is_a_model_version_tagged_with_our_version(
    client: MlflowClient, trained: Trained
) -> None:
    versions = client.search_model_versions(f"name = '{MODEL}'")

    assert len(versions) == 1
    assert versions[0].tags["inferq_version"] == trained.card["version"]
    assert versions[0].run_id == the_run(client).info.run_id


def test_set_alias_makes_the_alias_name_that_version_and_delete_alias_removes_it(
    client: MlflowClient, trained: Trained
) -> None:
    version = trained.card["version"]

    assert tracking.set_alias(TASK, version, "champion") is True
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["inferq_version"] == version

    assert tracking.delete_alias(TASK, "champion") is True
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(MODEL, "champion")
    assert tracking.delete_alias(TASK, "champion") is False


def test_set_alias_of_a_version_never_registered_is_false(
    client: MlflowClient, trained: Trained
) -> None:
    assert tracking.set_alias(TASK, "0123456789ab", "challenger") is False
    assert tracking.set_alias("topic", trained.card["version"], "challenger") is False
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(MODEL, "challenger")


def test_an_alias_other_than_champion_or_challenger_is_refused(client: MlflowClient) -> None:
    with pytest.raises(ValueError, match="champion, challenger"):
        tracking.set_alias(TASK, "0123456789ab", "production")


def test_set_alias_is_false_when_tracking_is_off_or_mlflow_is_missing(
    client: MlflowClient, trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = trained.card["version"]
    with monkeypatch.context() as patched:
        patched.setenv("INFERQ_TRACKING", "false")
        from core.config import get_settings

        get_settings.cache_clear()
        assert tracking.set_alias(TASK, version, "champion") is False
        get_settings.cache_clear()
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
        patched.setitem(sys.modules, "mlflow.exceptions", None)
        assert tracking.set_alias(TASK, version, "champion") is False
    assert tracking.set_alias(TASK, version, "champion") is True  # the store was never at fault


def test_fetch_artefact_downloads_files_that_load_as_the_same_version(
    client: MlflowClient, trained: Trained, tmp_path: Path
) -> None:
    dest = tmp_path / "fetched"

    fetched = tracking.fetch_artefact(TASK, trained.card["version"], dest)

    assert fetched == dest
    for path in trained.artefact.iterdir():
        assert (dest / path.name).read_bytes() == path.read_bytes(), path.name
    assert load_artefact(dest).version == trained.card["version"]
    assert tracking.fetch_artefact(TASK, "0123456789ab", tmp_path / "none") is None
    assert not (tmp_path / "none").exists()


def test_a_machine_without_a_registered_version_fetches_it_to_serve_and_roll_it_out(
    client: MlflowClient, trained: Trained, tmp_path: Path
) -> None:
    """The model store (core.inference.versions) falls back on the registry: a worker, or the
    CLI checking a rollout, gets a version trained elsewhere without a shared volume."""
    from core.inference import versions

    version = trained.card["version"]
    assert versions.find(tmp_path, TASK, version) is None
    adapter = versions.load(tmp_path, TASK, version, "cpu")
    assert adapter.version == version
    found = versions.find(tmp_path, TASK, version)  # now on this machine, found without MLflow
    assert found is not None and found.path == tmp_path / "models" / "sentiment-registry" / version
    with pytest.raises(FileNotFoundError, match="no trained sentiment version 0123456789ab"):
        versions.load(tmp_path, TASK, "0123456789ab", "cpu")


def test_promote_and_rollback_move_the_champion_alias(
    client: MlflowClient, trained: Trained, tmp_path: Path
) -> None:
    """`inferq models promote|rollback` (embedded mode, a fresh data dir) keep the registry's
    `champion` alias on what serves: the promoted version, then nothing (the shipped artefact)."""
    version = trained.card["version"]
    env = {
        "MLFLOW_TRACKING_URI": trained.uri,
        "INFERQ_TRACKING": "true",
        "INFERQ_DATA_DIR": str(tmp_path),
    }
    tracking.delete_alias(TASK, "champion")  # whatever an earlier test left
    promoted = inferq("models", "promote", TASK, version, **env)
    assert promoted.returncode == 0, promoted.stderr
    assert client.get_model_version_by_alias(MODEL, "champion").tags["inferq_version"] == version
    rolled_back = inferq("models", "rollback", TASK, **env)
    assert rolled_back.returncode == 0, rolled_back.stderr
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(MODEL, "champion")


def test_no_track_trains_without_touching_the_store(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(QUICK_LOGREG)
    store = tmp_path / "mlflow.db"

    done = train_logreg(
        tmp_path / "models",
        "--params",
        str(params),
        "--no-track",
        MLFLOW_TRACKING_URI=f"sqlite:///{store}",
        INFERQ_TRACKING="true",
    )

    assert done.returncode == 0, done.stderr
    assert "not tracked" in done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]).is_dir()
    assert not store.exists() and not (tmp_path / "mlruns").exists()


def test_without_mlflow_installed_training_works_and_says_tracking_is_off(tmp_path: Path) -> None:
    hidden = tmp_path / "hide" / "mlflow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('mlflow hidden by the test')\n")
    params = tmp_path / "params.yaml"
    params.write_text(QUICK_LOGREG)

    done = train_logreg(
        tmp_path / "models",
        "--params",
        str(params),
        PYTHONPATH=str(tmp_path / "hide"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        INFERQ_TRACKING="true",
    )

    assert done.returncode == 0, done.stderr
    assert "tracking is off: the mlflow package is not installed" in done.stderr
    assert "Traceback" not in done.stderr
    assert (Path(done.stdout.strip().splitlines()[-1]) / CARD_FILE).is_file()
