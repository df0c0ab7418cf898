"""The ``inferq`` command line: the composition root that starts each process.

Adapters (api, workers, producers) are imported inside the commands that need them, so
``inferq serve`` in distributed mode never imports torch and no command pays for the others.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli import admin, flower, models_data, models_ops, remote, rollout, status, usage
from core.config import Settings, get_settings
from core.db.models import Batch
from core.db.session import Database
from core.errors import InferqError
from core.telemetry.logging import configure_logging

if TYPE_CHECKING:
    from cli import process as processing

app = typer.Typer(help="inferq: queue-driven NLP inference.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
models_app = typer.Typer(
    help="Models: list, train, evaluate, calibrate; versions, promote, rollback, rollout.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(admin.keys_app, name="keys", no_args_is_help=True)
app.add_typer(admin.tenants_app, name="tenants", no_args_is_help=True)
app.command("audit")(admin.audit)
app.command("flower")(flower.flower)
app.command("usage")(usage.usage)
app.command("status")(status.status)
app.add_typer(models_app, name="models")
models_app.command("profile")(models_ops.profile)
models_app.command("train")(models_ops.train)
models_app.command("evaluate")(models_ops.evaluate)
models_app.command("calibrate")(models_ops.calibrate)
models_app.command("versions")(rollout.versions)
models_app.command("promote")(rollout.promote)
models_app.command("rollback")(rollout.rollback)
models_app.command("rollout")(rollout.rollout)
models_app.command("prepare")(models_data.prepare)
nightly_app = typer.Typer(help="The nightly inbox (INFERQ_INBOX_DIR).", no_args_is_help=True)
app.add_typer(nightly_app, name="nightly")
app.add_typer(remote.app, name="batches")

console = Console(stderr=True)


def _setup(quiet_logs: bool = False) -> Settings:
    settings = get_settings()
    configure_logging("WARNING" if quiet_logs else settings.log_level, settings.log_format)
    return settings


def upgrade_database(settings: Settings) -> None:
    from alembic import command
    from alembic.config import Config

    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent  # the repository (cli/ sits at its top)
    config = Config()
    config.set_main_option("script_location", str(root / "migrations"))
    config.set_main_option("sqlalchemy.url", settings.resolved_database_url)
    command.upgrade(config, "head")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the latest version."""
    settings = _setup()
    upgrade_database(settings)
    console.print(f"database at head: {settings.resolved_database_url.split('@')[-1]}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="API processes (distributed mode). Default INFERQ_API_WORKERS, else half the "
            "cores (at most 4).",
        ),
    ] = None,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="PEM certificate (chain): serve HTTPS. Needs --ssl-keyfile.",
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="PEM private key of --ssl-certfile."),
    ] = None,
    ssl_keyfile_password: Annotated[
        str | None,
        typer.Option(
            envvar="INFERQ_SSL_KEYFILE_PASSWORD",
            help="Password of an encrypted --ssl-keyfile (the variable keeps it out of ps).",
        ),
    ] = None,
) -> None:
    """Run the HTTP API (embedded mode also runs a worker and the beat schedule in-process)."""
    from functools import partial

    import uvicorn

    _check_tls_files(ssl_certfile, ssl_keyfile, ssl_keyfile_password)
    # No "server: uvicorn" header: it only tells a scanner what to try.
    run_server = partial(
        uvicorn.run,
        host=host,
        port=port,
        log_config=None,
        server_header=False,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        ssl_keyfile_password=ssl_keyfile_password,
    )
    settings = _setup()
    if workers is None:
        workers = settings.resolved_api_workers
    if workers > 1:
        if settings.embedded:
            raise typer.BadParameter(
                "--workers needs distributed mode (INFERQ_DATABASE_URL and INFERQ_BROKER_URL): "
                "embedded mode runs its one worker inside the API process",
                param_hint="--workers",
            )
        # One process serves only its share of the requests, so /metrics must add up every
        # process's counters: prometheus_client's multiprocess mode, set before it is imported
        # (each API process imports it afresh from the app's import string).
        _metrics_dir_for("api-metrics", settings)
        run_server("api.app:create_app", factory=True, workers=workers)
        return
    from api.app import create_app

    with ExitStack() as stack:
        if settings.embedded:
            upgrade_database(settings)
            from workers.embedded import running_worker

            stack.enter_context(running_worker(settings.data_dir))
        run_server(create_app(settings))


def _check_tls_files(certfile: Path | None, keyfile: Path | None, password: str | None) -> None:
    if (certfile is None) != (keyfile is None):
        raise typer.BadParameter(
            "HTTPS needs both the certificate and its private key",
            param_hint="'--ssl-certfile' and '--ssl-keyfile'",
        )
    if password is not None and keyfile is None:
        raise typer.BadParameter(
            "a key password without --ssl-keyfile: there is no key to unlock",
            param_hint="'--ssl-keyfile-password'",
        )


def _metrics_dir_for(name: str, settings: Settings) -> None:
    """PROMETHEUS_MULTIPROC_DIR for this process and its children, unless already set: a fresh
    folder under the data directory (the client's docs: wipe it between runs)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return
    metrics_dir = settings.data_dir / name
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(help="Comma-separated queues (default: interactive,bulk,maintenance)."),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated tasks to serve alone (e.g. ner,langid): consume only their "
            "own queues (interactive.TASK, bulk.TASK) and warm only their models. Each must be "
            "in INFERQ_TASK_QUEUES; cannot be combined with --queues."
        ),
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Pool processes or threads.")] = None,
    pool: Annotated[
        str | None,
        typer.Option(help="prefork, solo or threads (default: threads for --queues webhooks)."),
    ] = None,
) -> None:
    """Run a Celery worker (distributed mode). `--queues webhooks` runs a webhook sender:
    threads that wait on receivers (INFERQ_WEBHOOK_CONCURRENCY of them), no model.
    `--tasks langid` runs a worker for the tasks named only, which scales on its own."""
    from core.broker import WEBHOOKS_QUEUE

    settings = _setup()
    if tasks is not None:
        queues = _task_worker_queues(tasks, queues, settings)
    queues = queues or "interactive,bulk,maintenance"
    senders_only = queues == WEBHOOKS_QUEUE
    pool = pool or ("threads" if senders_only else "prefork")
    # Pool children record metrics into files here; the main process serves them all on
    # INFERQ_METRICS_PORT. prometheus_client reads this variable when it is first imported.
    _metrics_dir_for("worker-metrics", settings)
    default = settings.webhook_concurrency if senders_only else settings.resolved_worker_concurrency
    processes = concurrency or default
    os.environ["INFERQ_WORKER_CONCURRENCY"] = str(processes)  # pool children size torch threads
    get_settings.cache_clear()
    from workers.app import celery_app

    celery_app.worker_main(
        [
            "worker",
            f"--queues={queues}",
            f"--pool={pool}",
            f"--concurrency={processes}",
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={settings.log_level}",
        ]
    )


def _task_worker_queues(tasks: str, queues: str | None, settings: Settings) -> str:
    """The queues of a `--tasks` worker; its pool children warm only those tasks' models."""
    import json

    from core.broker import queues_for_tasks
    from core.inference.registry import task_names

    if queues is not None:
        # Refused rather than combined: a worker that also takes shared queues would run every
        # task, and the point of --tasks is a worker whose size follows its tasks alone.
        raise typer.BadParameter("use --tasks or --queues, not both", param_hint="--tasks")
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    unknown = sorted(set(names) - task_names())
    if unknown:
        raise typer.BadParameter(f"unknown tasks {unknown}", param_hint="--tasks")
    try:
        chosen = queues_for_tasks(names, settings)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tasks") from exc
    os.environ["INFERQ_WARM_TASKS"] = json.dumps(names)  # read again after cache_clear
    return ",".join(chosen)


@app.command()
def beat() -> None:
    """Run Celery beat: the outbox relay and the sweeper on their schedules."""
    from workers.app import celery_app

    settings = _setup()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    celery_app.start(
        [
            "beat",
            f"--schedule={settings.data_dir / 'celerybeat-schedule'}",
            f"--loglevel={settings.log_level}",
        ]
    )


@app.command()
def ingest() -> None:
    """Consume Kafka requests into jobs and publish their results (INFERQ_KAFKA_* settings)."""
    from producers.kafka_ingest import run_ingest

    settings = _setup()
    with ExitStack() as stack:
        if settings.embedded:
            upgrade_database(settings)
            from workers.embedded import running_worker

            stack.enter_context(running_worker(settings.data_dir))
        run_ingest(settings)


@app.command()
def process(
    input_path: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="JSONL/NDJSON ('text', optional 'id'), CSV with a 'text' column, or one text "
            "per line; .gz is read through; '-' reads JSONL from stdin.",
        ),
    ],
    task: Annotated[
        str,
        typer.Option(
            help="Task to run, or several separated by commas (e.g. sentiment,langid,ner): each "
            'line then gets {"id", "tasks": {name: {"result"|"error"}}}.'
        ),
    ] = "sentiment",
    output: Annotated[
        Path | None, typer.Option(help="JSONL results, one line per input (default: stdout).")
    ] = None,
) -> None:
    """Run every line of a file through the batch path and write one result line per input, in
    input order, as they finish. Run it again after a crash with the same INPUT and --output:
    it resumes where it stopped."""
    from cli import process as processing
    from core.jobs.validation import check_task
    from core.security.keys import local_tenant_id

    settings = _setup(quiet_logs=True)
    tasks = [name.strip() for name in task.split(",")]
    if len(set(tasks)) != len(tasks):
        raise typer.BadParameter(f"{task!r} names a task twice", param_hint="--task")
    for name in tasks:
        try:
            check_task(name)
        except InferqError as exc:
            raise typer.BadParameter(exc.detail, param_hint="--task") from exc
    if input_path != "-" and not Path(input_path).is_file():
        raise typer.BadParameter(f"{input_path} is not a file", param_hint="INPUT")
    if settings.embedded:
        upgrade_database(settings)
    database = Database(settings.resolved_database_url)
    with database.transaction() as session:
        tenant_id = local_tenant_id(session)
    start_worker = None
    if settings.embedded:
        from workers.embedded import running_worker

        def start_worker() -> AbstractContextManager[None]:
            return running_worker(settings.data_dir)

    started = time.perf_counter()
    try:
        ended, tally, resumed = processing.run(
            database, settings, tenant_id, input_path, tasks, output, console, start_worker
        )
    except InferqError as exc:
        console.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from exc
    _summary(ended, tally, resumed, time.perf_counter() - started, output)


def _summary(
    ended: list[Batch],
    tally: processing.Written,
    resumed: bool,
    elapsed: float,
    output: Path | None,
) -> None:
    table = Table(title="inferq process", show_header=False)
    for batch in ended:
        name = "batch" if len(ended) == 1 else f"batch ({batch.task})"
        table.add_row(name, f"{batch.id} ({batch.status}{', resumed' if resumed else ''})")
    table.add_row("lines", f"{ended[0].total:,}")
    if tally.skipped:
        table.add_row("already written", f"{tally.skipped:,}")
    table.add_row("written now", f"{tally.written:,}")
    table.add_row("seconds", f"{elapsed:,.1f}")
    table.add_row("lines/s", f"{tally.written / max(elapsed, 1e-9):,.1f}")
    for outcome, count in sorted(tally.outcomes.items()):
        table.add_row(outcome, f"{count:,}")
    if output:
        table.add_row("written to", str(output))
    console.print(table)


@nightly_app.command("run-now")
def nightly_run_now(
    wait: Annotated[
        bool,
        typer.Option(
            help="Wait for the batches to end and write their results (always in embedded "
            "mode, where this process is the worker)."
        ),
    ] = False,
    settle_seconds: Annotated[
        float | None,
        typer.Option(help="Take files unchanged this long (default INFERQ_INBOX_SETTLE_SECONDS)."),
    ] = None,
) -> None:
    """Scan the inbox now, as beat does on INFERQ_NIGHTLY_CRON: each new file becomes a batch
    (once: a file dropped twice runs once) and moves to processed/."""
    from core.jobs import nightly

    settings = _setup(quiet_logs=True)
    if not nightly.inboxes(settings):
        console.print("[red]no inbox: set INFERQ_INBOX_DIR[/red]")
        raise typer.Exit(1)
    if settings.embedded:
        upgrade_database(settings)
    database = Database(settings.resolved_database_url)
    picked = nightly.scan(database, settings, settle_seconds=settle_seconds)
    table = Table("file", "batch", "outcome")
    for found in picked:
        outcome = found.error or ("new batch" if found.new else "already run (same content)")
        table.add_row(found.file, str(found.batch_id or "-"), outcome)
    Console().print(table)
    if not (wait or settings.embedded):
        console.print("results are written to the outbox by beat when each batch ends")
        return
    waiting = [found.batch_id for found in picked if found.batch_id is not None]
    with ExitStack() as stack:
        if settings.embedded:
            from workers.embedded import running_worker

            stack.enter_context(running_worker(settings.data_dir))
        _wait_for_batches(database, waiting)
    for path in nightly.collect(database, settings):
        console.print(f"written: {path}")


def _wait_for_batches(database: Database, batch_ids: list[uuid.UUID]) -> None:
    from sqlalchemy import func, select

    from core.db.models import Batch
    from core.jobs.state import TERMINAL_BATCH

    while batch_ids:
        with database.read() as session:
            running = session.scalar(
                select(func.count())
                .select_from(Batch)
                .where(Batch.id.in_(batch_ids), Batch.status.not_in(list(TERMINAL_BATCH)))
            )
        if not running:
            return
        time.sleep(0.5)


@models_app.command("list")
def models_list() -> None:
    """Tasks and their fallback chains."""
    from core.inference.registry import all_tasks

    table = Table("task", "tier", "adapter", "description")
    for spec in all_tasks().values():
        for tier in spec.chain:
            table.add_row(spec.name, tier.tier, tier.adapter, spec.description)
    Console(width=140).print(table)


if __name__ == "__main__":
    app()
