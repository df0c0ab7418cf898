"""`inferq models train|evaluate|calibrate|profile`: training, evaluation, calibration, drift.

Heavy modules (the adapters, the strategies, torch, scikit-learn, yaml) are imported inside the
commands.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from core.inference.engine import ModelAdapter
    from core.inference.strategies.run import TrainedArtefact

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


def train(
    task: Annotated[str, typer.Argument(help="Task whose models to train.")] = "sentiment",
    arch: Annotated[
        str | None,
        typer.Option(help="Train one architecture (transformer, lstm, logreg) as a new version."),
    ] = None,
    params: Annotated[
        Path | None,
        typer.Option(
            help="YAML of recipe fields (or an `ARCH:` section of them); with --arch.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice in training.")] = 13,
    out_dir: Annotated[
        Path | None,
        typer.Option(help="Without --arch: write here, not in place. With it: versions go here."),
    ] = None,
    artefact_dir: Annotated[
        Path | None,
        typer.Option(
            help="With --arch: the artefact's files go exactly here (replaced), not in "
            "OUT_DIR/VERSION/; a fixed path for pipelines (dvc.yaml)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="With --arch: train.tsv and test.tsv from here (default: data/sst2).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    track: Annotated[
        bool | None,
        typer.Option(
            "--track/--no-track",
            help="With --arch: log the run to MLflow and register the artefact (default: "
            "INFERQ_TRACKING, on). Store: MLFLOW_TRACKING_URI, else DATA_DIR/mlflow.db.",
        ),
    ] = None,
) -> None:
    """Train a task's models from the data in data/ (seeded, so reproducible).

    Without --arch: retrain both shipped sentiment tiers in place, then their drift profiles.
    With --arch: train that one architecture into a new versioned folder with a model card, by
    default var/models/TASK-ARCH/VERSION/; the shipped artefacts are left alone. The run is
    tracked in MLflow (experiment and registered model inferq-TASK) unless --no-track.
    """
    from core.config import get_settings
    from core.telemetry.logging import configure_logging

    settings = get_settings()
    configure_logging("WARNING", settings.log_format)
    if arch is None:
        for given, name in (
            (params, "--params"),
            (artefact_dir, "--artefact-dir"),
            (data_dir, "--data-dir"),
        ):
            if given is not None:
                raise typer.BadParameter(f"{name} needs --arch", param_hint=name)
        _train_shipped(task, seed, out_dir, settings.device)
        return
    if artefact_dir is not None and out_dir is not None:
        raise typer.BadParameter("give --out-dir or --artefact-dir, not both")
    recipe = _read_params(params, arch)
    source = data_dir or _default_data_dir()
    if artefact_dir is not None:
        trained = _train_into(task, arch, recipe, seed, source, artefact_dir)
    else:
        root = out_dir or _default_root(settings.data_dir, task, arch)
        trained = _train_arch(task, arch, recipe, seed, source, root)
    if settings.tracking if track is None else track:
        _track(trained)
    else:
        console.print("not tracked (--no-track or INFERQ_TRACKING=false)")
    typer.echo(str(trained.path))  # stdout: the one line a script needs


def _default_root(data_root: Path, task: str, arch: str) -> Path:
    from core.inference.strategies.run import default_out_root

    return default_out_root(data_root, task, arch)


def _default_data_dir() -> Path:
    from core.inference.evaluation import DEFAULT_SST2_DIR

    return DEFAULT_SST2_DIR


def _train_arch(
    task: str, arch: str, recipe: dict[str, Any], seed: int, data_dir: Path, out_root: Path
) -> TrainedArtefact:
    from core.inference.strategies import UnknownArchitecture
    from core.inference.strategies.run import train_artefact

    try:
        trained = train_artefact(
            task,
            arch,
            data_dir=data_dir,
            out_root=out_root,
            params=recipe,
            seed=seed,
            progress=console.print,
        )
    except UnknownArchitecture as exc:
        raise typer.BadParameter(str(exc), param_hint="--arch") from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    metrics = trained.card["metrics"]["sst2_test"]
    console.print(
        f"{arch} {trained.card['version']}: accuracy {metrics['accuracy']:.4f}, macro-F1 "
        f"{metrics['macro_f1']:.4f}, ECE {metrics['ece']:.4f}, "
        f"{metrics['seconds_per_1000']:.3f} s per 1,000 inputs"
    )
    return trained


def _train_into(
    task: str, arch: str, recipe: dict[str, Any], seed: int, data_dir: Path, target: Path
) -> TrainedArtefact:
    """Train into a staging root beside `target`, then move the version folder to `target`.

    The content-hash version stays in the card; only the folder name is fixed, so a pipeline
    can declare it as an output without knowing the version in advance.
    """
    import shutil
    import uuid

    from core.inference.strategies.run import TrainedArtefact

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".train-{uuid.uuid4().hex}"
    try:
        trained = _train_arch(task, arch, recipe, seed, data_dir, staging)
        if target.exists():
            shutil.rmtree(target)
        trained.path.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TrainedArtefact(target, trained.card)


def _track(trained: TrainedArtefact) -> None:
    """Log the run to MLflow; a missing package or a failing store is one line, not an error:
    the artefact is written either way."""
    from core.inference import tracking

    try:
        run = tracking.log_training(trained.path, trained.card)
    except (tracking.TrackingUnavailable, tracking.TrackingFailed) as exc:
        console.print(str(exc), markup=False)
        return
    console.print(
        f"tracked: MLflow run {run.run_id} ({run.experiment}), registered {run.model_name} "
        f"version {run.model_version}, in {run.tracking_uri}",
        markup=False,
    )


def _read_params(path: Path | None, arch: str) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    from core.inference.strategies.base import select_params

    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(document, dict):
        raise typer.BadParameter(f"{path} is not a YAML mapping", param_hint="--params")
    try:
        return select_params(document, arch)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--params") from exc


def _train_shipped(task: str, seed: int, out_dir: Path | None, device: str) -> None:
    """The shipped tiers, retrained in place (or into `out_dir`), then their drift profiles."""
    from core.inference import light, training, transformer
    from core.inference.evaluation import DEFAULT_SST2_DIR

    if task == "topic":
        _train_topic(seed, out_dir)
        return
    if task != "sentiment":
        raise typer.BadParameter(f"only sentiment and topic have trainable models, not {task!r}")
    light_dir = out_dir / "sentiment-light" if out_dir else light.DEFAULT_LIGHT_ARTEFACT_DIR
    path = light.train_light_sentiment(DEFAULT_SST2_DIR, light_dir, seed=seed)
    console.print(f"fallback (TF-IDF + logistic regression) written to {path}")
    primary_dir = out_dir / "sentiment" if out_dir else transformer.SENTIMENT_ARTEFACT_DIR
    # The old temperature was fitted for the old weights: loading would refuse it as stale.
    (primary_dir / "calibration.json").unlink(missing_ok=True)
    path = training.train_sentiment(
        DEFAULT_SST2_DIR, primary_dir, seed=seed, progress=console.print
    )
    console.print(f"primary (MiniLM, fully fine-tuned) written to {path}")
    if out_dir is not None:  # calibration and profiles are made for the served artefacts
        console.print(
            "not calibrated, no drift profiles: install the artefacts, then "
            "`models calibrate` and `models profile`"
        )
        return
    from core.inference.calibration import calibrate_sentiment
    from core.inference.drift_profile import profile_task

    calibrate_sentiment(DEFAULT_SST2_DIR, ["primary"])
    # The drift reference of what was just trained, from held-out data it never saw.
    profile_task(task, device=device, progress=console.print)


def _train_topic(seed: int, out_dir: Path | None) -> None:
    """Both topic tiers from data/agnews, in place (or into `out_dir`)."""
    from core.inference import topic, training

    light_dir = out_dir / "topic-light" if out_dir else topic.TOPIC_LIGHT_DIR
    path = topic.train_light_topic(topic.DEFAULT_AGNEWS_DIR, light_dir, seed=seed)
    console.print(f"fallback (TF-IDF + logistic regression) written to {path}")
    primary_dir = out_dir / "topic" if out_dir else topic.TOPIC_ARTEFACT_DIR
    (primary_dir / "calibration.json").unlink(missing_ok=True)  # fitted for the old weights
    path = training.train_topic(
        topic.DEFAULT_AGNEWS_DIR, primary_dir, seed=seed, progress=console.print
    )
    console.print(f"primary (MiniLM + LoRA) written to {path}")


def evaluate(
    task: Annotated[str, typer.Argument(help="Task to evaluate.")] = "sentiment",
    data: Annotated[
        Path | None,
        typer.Option(help="Labelled TSV (sentence<TAB>label, header) or JSONL ({text, label})."),
    ] = None,
    artefact: Annotated[
        Path | None,
        typer.Option(help="Evaluate this `models train --arch` artefact, not the served tiers."),
    ] = None,
    metrics_json: Annotated[
        Path | None,
        typer.Option(
            help="Also write the figures here as JSON, {tier: {accuracy, ...}} (the tier of an "
            "--artefact is its arch); what `dvc metrics show` reads.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Accuracy, macro-F1 and ECE (15 bins) of every tier of TASK, or of one artefact, on DATA
    (default: SST-2 test), with predict() time per 1,000 inputs on this machine. `ner`: entity
    P/R/F1 on data/ner/test.jsonl; `langid`: accuracy on data/langid/eval.tsv; `topic`: accuracy
    and macro-F1 on data/agnews/test.tsv (DATA in the same format)."""
    from core.config import get_settings
    from core.inference.evaluation import DEFAULT_SST2_DIR
    from core.telemetry.logging import configure_logging

    settings = get_settings()
    configure_logging("WARNING", settings.log_format)
    if task in ("ner", "langid", "topic"):
        from cli.task_evaluation import evaluate_other

        _write_metrics(metrics_json, evaluate_other(task, data, artefact, settings.device))
        return
    if task != "sentiment":
        raise typer.BadParameter(
            f"only sentiment, ner, langid and topic can be evaluated, not {task!r}"
        )
    path = data or DEFAULT_SST2_DIR / "test.tsv"
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file", param_hint="--data")
    table = Table("task", "tier", "model", "version", "accuracy", "macro-F1", "ECE", "n", "s/1k")
    figures: dict[str, dict[str, Any]] = {}
    for tier, adapter in _adapters(task, artefact, settings.device):
        metrics = _scores(adapter, path)
        figures[tier] = {"model": adapter.name, "version": adapter.version, **metrics}
        table.add_row(task, tier, adapter.name, adapter.version, *_formatted(metrics))
    Console(width=140).print(table)
    _write_metrics(metrics_json, figures)


def _write_metrics(metrics_json: Path | None, figures: dict[str, dict[str, Any]]) -> None:
    if metrics_json is not None:
        metrics_json.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(figures, indent=2, sort_keys=True) + "\n"
        metrics_json.write_text(text, encoding="utf-8")


def _adapters(task: str, artefact: Path | None, device: str) -> Iterator[tuple[str, ModelAdapter]]:
    """(tier, adapter) for each tier of the task's chain, or the one artefact given."""
    if artefact is not None:
        from core.inference.strategies.run import load_artefact, read_card

        try:
            arch = str(read_card(artefact)["arch"])
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--artefact") from exc
        yield arch, load_artefact(artefact, device)
        return
    import importlib

    from core.inference.registry import get_task

    for tier in get_task(task).chain:
        module_name, class_name = tier.adapter.split(":")
        adapter_type = getattr(importlib.import_module(module_name), class_name)
        yield tier.tier, adapter_type.load(device=device)


def _scores(adapter: ModelAdapter, path: Path) -> dict[str, Any]:
    from core.inference.evaluation import iter_labelled, score_adapter

    try:
        return dict(score_adapter(adapter, iter_labelled(path)))
    except ValueError as exc:
        raise typer.BadParameter(f"{path}: {exc}", param_hint="--data") from exc


def _formatted(metrics: dict[str, Any]) -> list[str]:
    return [
        f"{metrics['accuracy']:.4f}",
        f"{metrics['macro_f1']:.4f}",
        f"{metrics['ece']:.4f}",
        str(metrics["n"]),
        f"{metrics['seconds_per_1000']:.3f}",
    ]


def calibrate(
    task: Annotated[
        str, typer.Argument(help="Task whose learned tiers to calibrate.")
    ] = "sentiment",
    tier: Annotated[
        list[str] | None,
        typer.Option(help="Tier to fit and write (repeat). Default: primary only; see below."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Fit and print, write nothing.")] = False,
) -> None:
    """Fit a temperature per learned tier on SST-2 dev.tsv (minimum NLL of softmax(logits / T)),
    write it into the artefact as calibration.json (a new version: the scores change), and print
    NLL and ECE (15 bins) before/after on dev and on SST-2 test, which is never fitted on.

    The fallback is not calibrated by default: it was trained on every train.tsv phrase, and
    dev.tsv's phrases come from the same reviews, so dev rewards its memory (92 % right there,
    82 % on test sentences) and a dev-fitted T sharpens scores that whole sentences do not
    support. Pass --tier fallback to fit it anyway. Run `inferq models profile` afterwards."""
    from core.config import get_settings
    from core.inference.calibration import calibrate_sentiment
    from core.inference.evaluation import DEFAULT_SST2_DIR
    from core.telemetry.logging import configure_logging

    configure_logging("WARNING", get_settings().log_format)
    if task != "sentiment":
        raise typer.BadParameter(f"only 'sentiment' has learned tiers to calibrate, not {task!r}")
    try:
        results = calibrate_sentiment(DEFAULT_SST2_DIR, tier or ["primary"], write=not dry_run)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tier") from exc
    table = Table("tier", "model", "T", "split", "n", "acc", "NLL before", "NLL after")
    table.add_column("ECE before")
    table.add_column("ECE after")
    table.add_column("version")
    for result in results:
        version = f"{result['old_version']} -> {result['new_version']}"
        for split, fit in (("dev (fit)", result["fit"]), ("test", result["test"])):
            table.add_row(
                result["tier"],
                result["model"],
                f"{result['temperature']:.4f}",
                split,
                str(fit["n"]),
                f"{fit['accuracy']:.4f}",
                f"{fit['nll_before']:.4f}",
                f"{fit['nll_after']:.4f}",
                f"{fit['ece_before']:.4f}",
                f"{fit['ece_after']:.4f}",
                version if result["written"] else "(not written)",
            )
    Console(width=160).print(table)
