"""MLflow tracking and model registry for `models train --arch` artefacts.

Every trained artefact becomes one MLflow run (params, metrics, the artefact folder and its card)
in experiment `inferq-<task>`, and one version of registered model `inferq-<task>` tagged
`inferq_version=<content hash>`, so our version names its MLflow model version. The aliases
`champion` and `challenger` mirror what serves; PostgreSQL stays the truth for rollouts, so every
alias call here is best effort and answers False instead of failing the caller's command.

The store is MLFLOW_TRACKING_URI when set, else `sqlite:///<data_dir>/mlflow.db`. For a SQLite
store the experiment's artefacts live beside the database (`<folder>/mlruns/`), not in the
current directory, which is MLflow's own default. mlflow is imported inside functions only: it
is an optional dependency (the `mlops` extra) and slow to import.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from core.config import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

VERSION_TAG = "inferq_version"
CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
ARTEFACT_PATH = "artefact"  # the artefact folder's place among the run's artifacts
CARD_PATH = "model_card.json"
METRICS_KEY = "sst2_test"  # the card's metrics section that runs log

_SAFE_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
log = structlog.get_logger(__name__)


class TrackingUnavailable(RuntimeError):
    """Tracking is switched off, or the mlflow package is not installed."""


class TrackingFailed(RuntimeError):
    """The store refused or could not be reached; the artefact itself is unaffected."""


@dataclass(frozen=True)
class TrackedRun:
    tracking_uri: str
    experiment: str
    run_id: str
    model_name: str
    model_version: str


def experiment_name(task: str) -> str:
    return f"inferq-{task}"


def registered_model_name(task: str) -> str:
    return f"inferq-{task}"


def tracking_uri(data_dir: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the local SQLite store under `data_dir` (default: the setting)."""
    explicit = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if explicit:
        return explicit
    root = data_dir if data_dir is not None else get_settings().data_dir
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def log_training(artefact_dir: Path, card: Mapping[str, Any]) -> TrackedRun:
    """Log one trained artefact as a run and register it as a model version.

    Raises TrackingUnavailable when tracking is off or mlflow is missing, TrackingFailed when the
    store fails; a run that fails half-way is marked FAILED.
    """
    if not get_settings().tracking:
        raise TrackingUnavailable("tracking is off (INFERQ_TRACKING=false)")
    task, version = str(card["task"]), str(card["version"])
    uri = tracking_uri()
    with _store_errors():
        client = _client(uri)
        experiment_id = _experiment_id(client, experiment_name(task), uri)
        run = client.create_run(
            experiment_id, tags=_run_tags(card), run_name=f"{card['arch']}-{version}"
        )
        run_id = run.info.run_id
        try:
            _log_run(client, run_id, artefact_dir, card)
            model_version = _register(client, task, version, run.info.artifact_uri, run_id, card)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    return TrackedRun(
        uri, experiment_name(task), run_id, registered_model_name(task), model_version
    )


def set_alias(task: str, version: str, alias: str) -> bool:
    """Point `alias` (champion or challenger) of `inferq-<task>` at our `version`.

    False, with no error, when tracking is off, mlflow is missing, the store cannot be reached
    or `version` was never registered.
    """
    _check_alias(alias)
    with _registry_best_effort("set alias") as client:
        if client is None:
            return False
        found = _model_version(client, task, version)
        if found is None:
            return False
        client.set_registered_model_alias(registered_model_name(task), alias, found.version)
        return True
    return False  # the store failed (logged by _registry_best_effort)


def delete_alias(task: str, alias: str) -> bool:
    """Remove `alias` from `inferq-<task>`; False when there was nothing to remove (or no store)."""
    _check_alias(alias)
    with _registry_best_effort("delete alias") as client:
        if client is None or not _alias_exists(client, task, alias):
            return False
        client.delete_registered_model_alias(registered_model_name(task), alias)
        return True
    return False


def fetch_artefact(task: str, version: str, dest: Path) -> Path | None:
    """Download the artefact folder of registered `version` so that its files are in `dest`.

    `dest` must not exist yet (the files arrive in a sibling staging folder, then move in one
    rename). None when tracking is off, mlflow is missing or `version` was never registered.
    The card's version is checked; load the artefact to check its content hash as well.
    """
    if dest.exists():
        raise FileExistsError(f"{dest} exists; fetch_artefact fills a new folder")
    with _registry_best_effort("fetch artefact") as client:
        if client is None:
            return None
        found = _model_version(client, task, version)
        if found is None or found.run_id is None:
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.parent / f".fetch-{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            local = Path(client.download_artifacts(found.run_id, ARTEFACT_PATH, str(staging)))
            _check_card(local, version)
            local.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest
    return None


def _check_alias(alias: str) -> None:
    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}, not {alias!r}")


def _check_card(artefact_dir: Path, version: str) -> None:
    import json

    card = json.loads((artefact_dir / CARD_PATH).read_text(encoding="utf-8"))
    if card.get("version") != version:
        raise ValueError(f"registered artefact says version {card.get('version')}, not {version}")


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise TrackingUnavailable(
            "tracking is off: the mlflow package is not installed (pip install 'inferq[mlops]')"
        ) from exc
    return mlflow


def _client(uri: str) -> MlflowClient:
    mlflow = _import_mlflow()
    # MLflow logs each schema migration of a new SQLite store at INFO: noise in a CLI.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    client: MlflowClient = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client


@contextmanager
def _store_errors() -> Iterator[None]:
    """mlflow's and the file system's errors as TrackingFailed (TrackingUnavailable passes)."""
    from_mlflow: tuple[type[BaseException], ...] = (OSError,)
    try:
        from mlflow.exceptions import MlflowException

        from_mlflow = (MlflowException, OSError)
    except ImportError:
        pass  # _import_mlflow says so on first use
    try:
        yield
    except from_mlflow as exc:
        raise TrackingFailed(f"MLflow tracking failed: {exc}") from exc


@contextmanager
def _registry_best_effort(action: str) -> Iterator[MlflowClient | None]:
    """A client for an alias or fetch call, or None where there is no registry to ask.

    A store error is logged and swallowed (the caller's `return` after the block answers it):
    the registry mirrors rollout state kept in PostgreSQL and must not fail a promote.
    """
    uri = tracking_uri()
    if not get_settings().tracking or _missing_local_store(uri):
        yield None
        return
    try:
        with _store_errors():
            try:
                client = _client(uri)
            except TrackingUnavailable:
                yield None
                return
            yield client
    except TrackingFailed as exc:
        log.warning("mlflow_registry_unavailable", action=action, error=str(exc))


def _missing_local_store(uri: str) -> bool:
    """A SQLite store that does not exist holds no versions; opening it would create it."""
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def _run_tags(card: Mapping[str, Any]) -> dict[str, str]:
    return {
        VERSION_TAG: str(card["version"]),
        "task": str(card["task"]),
        "arch": str(card["arch"]),
        "model_name": str(card.get("name", "")),
        "preprocess_version": str(card.get("preprocess_version", "")),
    }


def run_params(card: Mapping[str, Any]) -> dict[str, str]:
    """What a run logs as params: the recipe's fields, then the seed, arch, task and data hash."""
    data = card.get("data", {}).get("train", {})
    meta = {
        "seed": card.get("seed"),
        "arch": card["arch"],
        "task": card["task"],
        "data_sha256": data.get("sha256"),
        "data_lines": data.get("lines"),
        "preprocess_version": card.get("preprocess_version"),
    }
    return {key: str(value) for key, value in {**card.get("params", {}), **meta}.items()}


def run_metrics(card: Mapping[str, Any]) -> dict[str, float]:
    """What a run logs as metrics: the card's numbers on SST-2 test and the training time."""
    scores = card.get("metrics", {}).get(METRICS_KEY, {})
    metrics = {
        key: float(value)
        for key, value in scores.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    if "train_seconds" in card:
        metrics["train_seconds"] = float(card["train_seconds"])
    return metrics


def _log_run(
    client: MlflowClient, run_id: str, artefact_dir: Path, card: Mapping[str, Any]
) -> None:
    from mlflow.entities import Metric, Param

    now = _now_ms()
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, now, 0) for key, value in run_metrics(card).items()],
        params=[Param(key, value) for key, value in run_params(card).items()],
    )
    client.log_artifacts(run_id, str(artefact_dir), artifact_path=ARTEFACT_PATH)
    client.log_artifact(run_id, str(artefact_dir / CARD_PATH))


def _register(
    client: MlflowClient,
    task: str,
    version: str,
    artifact_uri: str,
    run_id: str,
    card: Mapping[str, Any],
) -> str:
    from mlflow.exceptions import MlflowException

    name = registered_model_name(task)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        description = f"inferq `{task}` artefacts; version tag {VERSION_TAG} is our content hash"
        client.create_registered_model(name, description=description)
    created = client.create_model_version(
        name,
        source=f"{artifact_uri}/{ARTEFACT_PATH}",
        run_id=run_id,
        tags={VERSION_TAG: version, "arch": str(card["arch"])},
    )
    return str(created.version)


def _model_version(client: MlflowClient, task: str, version: str) -> ModelVersion | None:
    """The newest model version of `inferq-<task>` tagged with our `version`, if any."""
    if not _SAFE_VERSION.match(version):
        return None
    name = registered_model_name(task)
    found = client.search_model_versions(f"name = '{name}' and tags.{VERSION_TAG} = '{version}'")
    return max(found, key=lambda candidate: int(candidate.version), default=None)


def _alias_exists(client: MlflowClient, task: str, alias: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version_by_alias(registered_model_name(task), alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return False
        raise
    return True


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
