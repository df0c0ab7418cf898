"""`inferq models versions|promote|rollback|rollout`: what serves a task's primary tier.

The state lives in the database (core.rollout); workers pick a change up within
INFERQ_ROLLOUT_REFRESH_SECONDS, without a restart. Every change is audited with the
operating-system user as its actor, and mirrored on the MLflow registry's aliases (`champion`,
`challenger`) when the version was registered there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from cli.admin import _actor
from core.config import Settings, get_settings
from core.db.session import Database
from core.errors import InferqError
from core.rollout.state import Rollout
from core.telemetry.logging import configure_logging

console = Console(stderr=True)

Task = Annotated[str, typer.Argument(help="The task, e.g. sentiment.")]


def versions(task: Task = "sentiment") -> None:
    """The versions this machine can serve for TASK: the shipped artefact and every trained one,
    with their test metrics and the role each plays now."""
    from core.inference import versions as store
    from core.rollout.state import read

    settings, database = _database()
    with database.read() as session:
        rollout = read(session, task)
    table = Table("version", "arch", "role", "accuracy", "macro-F1", "ECE", "path")
    shipped = store.shipped_version(task)
    if shipped is not None:
        table.add_row(shipped, "shipped", _role(rollout, shipped, shipped), "", "", "", "")
    for found in store.trained_versions(settings.data_dir, task):
        metrics = found.card.get("metrics", {}).get("sst2_test", {})
        table.add_row(
            found.version,
            found.arch,
            _role(rollout, found.version, shipped),
            *(_number(metrics.get(name)) for name in ("accuracy", "macro_f1", "ece")),
            str(found.path),
        )
    Console(width=160).print(table)


def promote(
    task: Task,
    version: Annotated[str, typer.Argument(help="The version to serve (`models versions`).")],
) -> None:
    """Make VERSION the champion of TASK: every input not in a canary's share meets it."""
    from core.rollout import changes

    settings, _ = _database()
    _change(lambda s, actor: changes.promote(s, settings.data_dir, task, version, actor))
    _alias(task, version, "champion")


def rollback(task: Task) -> None:
    """Serve TASK with the champion before this one again, ending any canary and shadow."""
    from core.rollout import changes

    rollout = _change(lambda s, actor: changes.rollback(s, task, actor))
    _alias(task, rollout.champion, "champion")  # None: the shipped artefact, not registered


def rollout(
    task: Task,
    canary: Annotated[str | None, typer.Option(help="Serve this version to a share.")] = None,
    percent: Annotated[
        float, typer.Option(help="The canary's share of inputs, by input hash (0-100].")
    ] = 10.0,
    shadow: Annotated[
        str | None, typer.Option(help="Run this version beside the champion, off the results.")
    ] = None,
    shadow_percent: Annotated[
        float, typer.Option(help="The share of inputs the shadow also runs on (0-100].")
    ] = 100.0,
    stop: Annotated[bool, typer.Option("--stop", help="End the canary and the shadow.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the state as JSON.")] = False,
) -> None:
    """Start a canary (--canary VERSION --percent P) or a shadow (--shadow VERSION), end them
    (--stop), or, with none of these, show TASK's rollout and how each version does."""
    from core.rollout import changes

    settings, _ = _database()
    if stop:
        _change(lambda s, actor: changes.stop(s, task, actor))
        _alias(task, None, "challenger")
    if canary is not None:
        _change(
            lambda s, actor: changes.set_canary(s, settings.data_dir, task, canary, percent, actor)
        )
        _alias(task, canary, "challenger")
    if shadow is not None:
        _change(
            lambda s, actor: changes.set_shadow(
                s, settings.data_dir, task, shadow, shadow_percent, actor
            )
        )
        _alias(task, shadow, "challenger")
    _show(task, as_json)


def _show(task: str, as_json: bool) -> None:
    from core.rollout.report import presented, report

    _, database = _database()
    with database.read() as session:
        found = presented(report(session, task))
    if as_json:
        typer.echo(found.model_dump_json(indent=2))
        return
    console.print(
        f"{task} revision {found.revision}: champion {found.champion}"
        + (" (shipped)" if found.champion_is_shipped else "")
        + (f"; canary {found.canary} at {found.canary_percent:g} %" if found.canary else "")
        + (f"; shadow {found.shadow} on {found.shadow_percent:g} %" if found.shadow else "")
    )
    table = Table("version", "role", "items", "ms/item", "confidence", "agreement", "failed")
    for row in found.versions:
        table.add_row(
            row.version,
            row.role,
            str(row.items),
            _number(row.ms_per_item, "{:.2f}"),
            _number(row.mean_confidence),
            _number(row.agreement),
            str(row.failed),
        )
    console.print(table)


def _change(apply: Callable[[Session, str], Rollout]) -> Rollout:
    _, database = _database()
    try:
        with database.transaction() as session:
            changed = apply(session, _actor())
    except InferqError as exc:
        console.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"revision {changed.revision}: {json.dumps(_state(changed))}")
    return changed


def _alias(task: str, version: str | None, alias: str) -> None:
    """Mirror the change on the MLflow registry: the alias names `version`, or nothing when it
    is None (nothing happens when tracking is off, mlflow is not installed or the version was
    not registered there)."""
    from core.inference import tracking

    if version is None:
        if tracking.delete_alias(task, alias):
            console.print(f"MLflow: inferq-{task} alias {alias!r} removed")
    elif tracking.set_alias(task, version, alias):
        console.print(f"MLflow: inferq-{task} alias {alias!r} -> {version}")


def _database() -> tuple[Settings, Database]:
    from cli.main import upgrade_database

    settings = get_settings()
    configure_logging("WARNING", settings.log_format)
    if settings.embedded:  # the file database may not exist yet on a fresh machine
        upgrade_database(settings)
    return settings, Database(settings.resolved_database_url)


def _state(rollout: Rollout) -> dict[str, object]:
    return {
        "champion": rollout.champion or "shipped",
        "canary": rollout.canary,
        "canary_percent": rollout.canary_percent,
        "shadow": rollout.shadow,
        "shadow_percent": rollout.shadow_percent,
    }


def _role(rollout: Rollout, version: str, shipped: str | None) -> str:
    if version == (rollout.champion or shipped):
        return "champion"
    if version == rollout.canary:
        return f"canary {rollout.canary_percent:g} %"
    if version == rollout.shadow:
        return "shadow"
    return ""


def _number(value: float | None, template: str = "{:.4f}") -> str:
    return "" if value is None else template.format(value)
