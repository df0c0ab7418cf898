"""`inferq models prepare`: check and fingerprint labelled data (dvc.yaml's first stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def prepare(
    task: Annotated[str, typer.Argument(help="Task whose data to prepare.")] = "sentiment",
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of train/dev/test.tsv (default: data/sst2).", file_okay=False),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(help="Write the checked copies and manifest.json here (replaced)."),
    ] = Path("var/prepared/sst2"),
) -> None:
    """Check TASK's labelled TSVs (UTF-8, header, two columns, 0/1 labels, text that
    normalisation leaves non-empty) and copy them byte for byte to OUT with a manifest: each
    split's sha256, rows and label counts, and how many dev/test texts train also holds."""
    from core.inference.evaluation import DEFAULT_SST2_DIR
    from core.inference.prepare import DatasetError, prepare_dataset

    if task != "sentiment":
        raise typer.BadParameter(f"only 'sentiment' has labelled data to prepare, not {task!r}")
    try:
        manifest = prepare_dataset(data_dir or DEFAULT_SST2_DIR, out)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data-dir") from exc
    table = Table("split", "rows", "negative", "positive", "also in train", "sha256")
    for name, split in manifest["splits"].items():
        overlap = manifest["in_train"].get(name)
        table.add_row(
            name,
            str(split["rows"]),
            str(split["labels"]["negative"]),
            str(split["labels"]["positive"]),
            "" if overlap is None else str(overlap),
            split["sha256"][:16],
        )
    console.print(table)
    typer.echo(str(out))
