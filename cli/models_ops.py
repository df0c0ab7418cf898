"""`inferq models profile`: the drift reference profile of a task's artefacts.

Heavy modules (the adapters, torch for the primary tier) are imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def profile(
    task: Annotated[str, typer.Argument(help="Task whose artefacts to profile.")] = "sentiment",
    out_dir: Annotated[
        Path | None, typer.Option(help="Write profiles here, not beside the artefacts.")
    ] = None,
) -> None:
    """Write drift_profile.json beside each learned artefact of TASK (label, confidence and
    length histograms and a hashed bag-of-words sample, from held-out SST-2 sentences). The
    artefacts' versions do not change."""
    from core.config import get_settings
    from core.inference.drift_profile import profile_task
    from core.telemetry.logging import configure_logging

    settings = get_settings()
    configure_logging("WARNING", settings.log_format)
    try:
        profile_task(task, device=settings.device, out_dir=out_dir, progress=console.print)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="TASK") from exc
