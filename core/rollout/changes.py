"""Changing what serves a task: promote, rollback, canary, shadow, stop.

Each change takes a session and never commits (the caller's transaction does), bumps the task's
revision (per-version stats start afresh), appends the new state to the task's history and writes
an audit event, all in that one transaction. Versions are checked against this machine's model
store (``core.inference.versions``): a version nobody here can load is refused before any worker
is asked to serve it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import ModelRollout, ModelRolloutChange, utcnow
from core.errors import InvalidInput, InvalidTransition, NotFound, UnknownTask
from core.inference import versions
from core.inference.registry import task_names
from core.rollout.state import Rollout, of_row, read
from core.security import audit

STATE_FIELDS = ("champion", "canary", "canary_percent", "shadow", "shadow_percent")


def promote(session: Session, data_dir: Path, task: str, version: str, actor: str) -> Rollout:
    """Make `version` the champion. A canary or shadow of that same version ends with it."""
    known = _known(data_dir, task, version)
    now = _locked(session, task)
    champion = None if known.shipped else version
    if champion == now.champion:
        raise InvalidTransition(f"{version} already is the {task} champion")
    new = replace(
        now,
        champion=champion,
        canary=None if now.canary == version else now.canary,
        canary_percent=0.0 if now.canary == version else now.canary_percent,
        shadow=None if now.shadow == version else now.shadow,
    )
    return _change(session, new, "promote", actor, target=version)


def rollback(session: Session, task: str, actor: str) -> Rollout:
    """Back to the champion before this one (as `kubectl rollout undo`: twice returns), with no
    canary and no shadow. The first champion before any promotion is the shipped artefact."""
    now = _locked(session, task)
    earlier = session.scalars(
        select(ModelRolloutChange.champion)
        .where(ModelRolloutChange.task == task)
        .order_by(ModelRolloutChange.id.desc())
    ).all()
    previous = next((c for c in earlier if c != now.champion), _NOTHING)
    if previous is _NOTHING:
        if now.champion is None:
            raise InvalidTransition(f"{task} has no earlier champion to roll back to")
        previous = None  # before the first promotion, the shipped artefact served
    new = replace(now, champion=previous, canary=None, canary_percent=0.0, shadow=None)
    return _change(session, new, "rollback", actor, target=previous or "shipped")


def set_canary(
    session: Session, data_dir: Path, task: str, version: str, percent: float, actor: str
) -> Rollout:
    """Serve `percent` % of inputs (chosen by input hash) with `version`."""
    return _challenger(session, data_dir, task, version, percent, actor, role="canary")


def set_shadow(
    session: Session, data_dir: Path, task: str, version: str, percent: float, actor: str
) -> Rollout:
    """Run `version` beside the champion on `percent` % of inputs, off the result path."""
    return _challenger(session, data_dir, task, version, percent, actor, role="shadow")


def _challenger(
    session: Session,
    data_dir: Path,
    task: str,
    version: str,
    percent: float,
    actor: str,
    *,
    role: str,
) -> Rollout:
    """`version` as the canary or the shadow (`role`) on `percent` % of inputs."""
    if not 0 < percent <= 100:
        raise InvalidInput(f"a {role} takes 0 < percent <= 100, not {percent}")
    _known(data_dir, task, version)
    now = _locked(session, task)
    if version == (now.champion or versions.shipped_version(task)):
        raise InvalidTransition(f"{version} is the {task} champion: a {role} must differ")
    if role == "canary":
        new = replace(now, canary=version, canary_percent=float(percent))
    else:
        new = replace(now, shadow=version, shadow_percent=float(percent))
    return _change(session, new, role, actor, target=version)


def stop(session: Session, task: str, actor: str) -> Rollout:
    """End the canary and the shadow; the champion alone serves."""
    now = _locked(session, task)
    if not now.active:
        raise InvalidTransition(f"{task} has no canary or shadow to stop")
    new = replace(now, canary=None, canary_percent=0.0, shadow=None)
    return _change(session, new, "stop", actor, target=None)


@dataclass(frozen=True)
class Change:
    """One past state of a task's rollout, as `history` reads it (plain values, no session)."""

    revision: int
    action: str
    champion: str | None
    canary: str | None
    canary_percent: float
    shadow: str | None
    shadow_percent: float
    at: datetime
    actor: str


def history(session: Session, task: str, limit: int = 20) -> list[Change]:
    """The task's last changes, newest first."""
    rows = session.scalars(
        select(ModelRolloutChange)
        .where(ModelRolloutChange.task == task)
        .order_by(ModelRolloutChange.id.desc())
        .limit(limit)
    )
    return [
        Change(
            row.revision,
            row.action,
            row.champion,
            row.canary,
            row.canary_percent,
            row.shadow,
            row.shadow_percent,
            row.at,
            row.actor,
        )
        for row in rows
    ]


_NOTHING = "\x00nothing"  # no earlier champion in the history (None is the shipped artefact)


def _known(data_dir: Path, task: str, version: str) -> versions.ModelVersion:
    if task not in task_names():
        raise UnknownTask(f"no task {task!r}; the tasks are {', '.join(sorted(task_names()))}")
    found = versions.find_or_fetch(data_dir, task, version)
    if found is None:
        raise NotFound(
            f"no {task} version {version!r} on this machine (shipped or under "
            f"{versions.models_root(data_dir)}) nor in the MLflow registry; "
            f"`inferq models versions {task}` lists them"
        )
    return found


def _locked(session: Session, task: str) -> Rollout:
    """The task's rollout, its row locked until commit: two concurrent changes serialise."""
    if task not in task_names():
        raise UnknownTask(f"no task {task!r}; the tasks are {', '.join(sorted(task_names()))}")
    row = session.scalar(select(ModelRollout).where(ModelRollout.task == task).with_for_update())
    return read(session, task) if row is None else of_row(row)


def _change(session: Session, new: Rollout, action: str, actor: str, target: str | None) -> Rollout:
    state = {name: getattr(new, name) for name in STATE_FIELDS}
    revision, at = new.revision + 1, utcnow()
    row = session.get(ModelRollout, new.task)
    if row is None:
        row = ModelRollout(task=new.task)
        session.add(row)
    for name, value in state.items():
        setattr(row, name, value)
    row.revision, row.changed_at, row.changed_by = revision, at, actor
    session.add(
        ModelRolloutChange(task=new.task, revision=revision, action=action, actor=actor, **state)
    )
    audit.record(
        session,
        actor,
        f"model.{action}",
        None,
        target=f"{new.task}@{target}" if target else new.task,
        details={**state, "revision": revision},
    )
    return replace(new, revision=revision, changed_at=at, changed_by=actor)
