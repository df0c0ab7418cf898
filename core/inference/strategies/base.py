"""What every training strategy provides, and how `--params` become its recipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

from core.inference.engine import ModelAdapter

Progress = Callable[[str], None]


class UnknownArchitecture(ValueError):
    """`--arch` names no registered strategy."""

    def __init__(self, arch: str, known: list[str]) -> None:
        super().__init__(f"unknown architecture {arch!r}; known: {', '.join(known)}")
        self.arch = arch
        self.known = known


class TrainingStrategy(Protocol):
    """One architecture: a recipe type, how to train an artefact, how to load it as a tier."""

    arch: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]

    def default_recipe(self) -> Any:
        """A frozen dataclass of hyper-parameters; `recipe_from_params` overrides its fields."""
        ...

    def train(
        self, data_dir: Path, out_dir: Path, recipe: Any, *, seed: int, progress: Progress
    ) -> None:
        """Train on `data_dir`/train.tsv and write the artefact's files into `out_dir`."""
        ...

    def load(self, artefact_dir: Path, device: str = "cpu") -> ModelAdapter:
        """The artefact in `artefact_dir` as a serving adapter; its version is a content hash."""
        ...


def recipe_from_params(default: Any, params: Mapping[str, Any]) -> Any:
    """`default` with the fields `params` names replaced; an unknown name is an error.

    Lists become tuples, so a YAML list can set a tuple field and the recipe stays hashable.
    """
    names = {field.name for field in dataclasses.fields(default)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)}; this recipe has {', '.join(sorted(names))}"
        )
    values = {
        key: tuple(value) if isinstance(value, list) else value for key, value in params.items()
    }
    return dataclasses.replace(default, **values)


def select_params(document: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """A params file's settings for `arch`: its `arch:` section if it has one, else the whole file.

    One file can then hold every architecture's settings, as a DVC params.yaml does.
    """
    section = document.get(arch, document)
    if not isinstance(section, Mapping):
        raise ValueError(f"params for {arch!r} must be a mapping, not {type(section).__name__}")
    return dict(section)
