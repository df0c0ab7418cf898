"""The versions a task's primary tier can serve: the artefact shipped with the code, and every
version `inferq models train TASK --arch ...` wrote under ``data_dir/models/TASK-ARCH/VERSION/``.

A version is a content hash (the folder's name, the adapter's ``version``), so the same string
names the same bytes on every machine. A version missing here is fetched from the MLflow
registry when tracking is on and it was registered there (``core.inference.tracking``), into
``data_dir/models/TASK-registry/VERSION/``; otherwise a worker that lacks it cannot serve it and
says so (its chain then falls back). Torch-free: the API and the CLI list versions without
loading any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from core.inference.registry import get_task, tier_version

if TYPE_CHECKING:
    from core.inference.engine import ModelAdapter

log = structlog.get_logger(__name__)

CARD_FILE = "model_card.json"  # core.inference.strategies.run.CARD_FILE, without its imports


@dataclass(frozen=True)
class ModelVersion:
    task: str
    version: str
    arch: str  # "shipped" for the artefact that comes with the code
    path: Path | None  # None for the shipped artefact (its adapter knows where it is)
    card: dict[str, Any]

    @property
    def shipped(self) -> bool:
        return self.path is None


def shipped_version(task: str) -> str | None:
    """The version of the task's registered primary tier, from its files; None when its files
    do not tell (an adapter that must load to know, or a package this image lacks)."""
    primary = get_task(task).chain[0]
    try:
        return tier_version(task, primary.tier)
    except (ImportError, OSError):  # its files live in a package this image does not install
        return None


def models_root(data_dir: Path) -> Path:
    return data_dir / "models"


def trained_versions(data_dir: Path, task: str) -> list[ModelVersion]:
    """Every trained version of `task` on this machine, newest folder first."""
    import json

    found = []
    for card_path in models_root(data_dir).glob(f"{task}-*/*/{CARD_FILE}"):
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("model_card_unreadable", path=str(card_path), error=str(exc))
            continue
        if card.get("task") != task or card.get("version") != card_path.parent.name:
            continue  # a copied or renamed folder: its name no longer says what it holds
        found.append(
            ModelVersion(task, card_path.parent.name, card["arch"], card_path.parent, card)
        )
    return sorted(found, key=lambda v: v.path.stat().st_mtime if v.path else 0.0, reverse=True)


def find(data_dir: Path, task: str, version: str) -> ModelVersion | None:
    """The version named, shipped or trained; None when this machine has no such version."""
    if version == shipped_version(task):
        return ModelVersion(task, version, "shipped", None, {})
    return next((v for v in trained_versions(data_dir, task) if v.version == version), None)


def find_or_fetch(data_dir: Path, task: str, version: str) -> ModelVersion | None:
    """As `find`, fetching the version from the MLflow registry when this machine lacks it."""
    found = find(data_dir, task, version)
    if found is not None:
        return found
    from core.inference import tracking  # mlflow itself only inside, if installed

    fetched = tracking.fetch_artefact(
        task, version, models_root(data_dir) / f"{task}-registry" / version
    )
    if fetched is None:
        return None
    log.info("model_version_fetched", task=task, version=version, path=str(fetched))
    return find(data_dir, task, version)


def load(data_dir: Path, task: str, version: str, device: str) -> ModelAdapter:
    """A trained version as a serving adapter. FileNotFoundError when this machine lacks it and
    the registry cannot provide it."""
    from core.inference.strategies.run import load_artefact

    found = find_or_fetch(data_dir, task, version)
    if found is None or found.path is None:
        raise FileNotFoundError(
            f"no trained {task} version {version} under {models_root(data_dir)} on this machine"
        )
    adapter = load_artefact(found.path, device)
    if adapter.version != version:
        raise ValueError(f"{found.path} holds version {adapter.version}, not {version}")
    return adapter
