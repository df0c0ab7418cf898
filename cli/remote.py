"""``inferq batches``: the bulk door of a remote inferq API (INFERQ_API_URL, INFERQ_API_KEY),
for users whose files live on another machine than the workers. The file streams up (never read
whole), results stream down."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from core.config import Settings, get_settings
from core.jobs.batch_input import file_lines, input_digest, input_format, open_binary, read_chunks

app = typer.Typer(
    help="Batches on a remote API (INFERQ_API_URL, INFERQ_API_KEY).", no_args_is_help=True
)
console = Console(stderr=True)
OVER = ("completed", "failed", "cancelled", "expired")
UPLOAD_CHUNK_BYTES = 1 << 20
RATE_LIMIT_ATTEMPTS = 6
MAX_RETRY_AFTER_SECONDS = 120.0


def _client(settings: Settings) -> httpx.Client:
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    timeout = httpx.Timeout(60.0, read=900.0)  # the upload is answered once it is all written
    return httpx.Client(base_url=settings.api_url, headers=headers, timeout=timeout)


def _patiently(
    send: Callable[[], httpx.Response], retry: bool = True, attempts: int = RATE_LIMIT_ATTEMPTS
) -> httpx.Response:
    """``send()``, again after ``Retry-After`` while the API answers 429 (a rate limit or the
    tenant's quota of pending work), ``attempts`` times at most; then the answer as it is."""
    for attempt in range(1, attempts + 1):
        response = send()
        if response.status_code != 429 or not retry or attempt == attempts:
            return response
        delay = min(float(response.headers.get("retry-after", "5")), MAX_RETRY_AFTER_SECONDS)
        console.print(f"[yellow]429: {_detail(response)}; again in {delay:g} s[/yellow]")
        time.sleep(delay)
    raise AssertionError("unreachable")


def _detail(response: httpx.Response) -> str:
    response.read()
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    console.print(f"[red]{response.status_code}: {_detail(response)}[/red]")
    raise typer.Exit(1)


def ndjson_body(path: str, settings: Settings) -> Iterator[bytes]:
    """The file as NDJSON: JSONL passes through as it is (the server reads every line); CSV and
    text lines are re-encoded as ``{"id", "text"}``."""
    if input_format(path) == "jsonl":
        with open_binary(path) as handle:
            yield from read_chunks(handle, UPLOAD_CHUNK_BYTES)
        return
    buffer: list[str] = []
    size = 0
    for line in file_lines(path, settings):
        encoded = json.dumps({"id": line.id, "text": line.text}, ensure_ascii=False)
        buffer.append(encoded)
        size += len(encoded)
        if size >= UPLOAD_CHUNK_BYTES:
            yield ("\n".join(buffer) + "\n").encode()
            buffer, size = [], 0
    if buffer:
        yield ("\n".join(buffer) + "\n").encode()


def file_key(path: str, task: str) -> str | None:
    if path == "-":
        return None
    return f"file:{task}:{input_digest(path, task)}"


@app.command("submit")
def submit(
    file: Annotated[str, typer.Argument(help="JSONL/NDJSON, CSV, text (.gz too), '-' stdin.")],
    task: Annotated[
        str, typer.Option(help="Task to run, or several joined by commas (sentiment,langid).")
    ] = "sentiment",
    wait: Annotated[bool, typer.Option(help="Wait for the batch to end.")] = False,
    output: Annotated[Path | None, typer.Option(help="With --wait: write results here.")] = None,
    completion_window: Annotated[str | None, typer.Option(help="e.g. 24h")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="batch.* events go here.")] = None,
) -> None:
    """Upload a file as a batch; prints the batch object. The same file and task again is the
    same batch (its content hash is the Idempotency-Key): a retried submit does not run twice."""
    settings = get_settings()
    if file != "-" and not Path(file).is_file():
        raise typer.BadParameter(f"{file} is not a file", param_hint="FILE")
    params = {"task": task}
    if completion_window:
        params["completion_window"] = completion_window
    if webhook_url:
        params["webhook_url"] = webhook_url
    headers = {"Content-Type": "application/x-ndjson"}
    if (key := file_key(file, task)) is not None:
        headers["Idempotency-Key"] = key
    with _client(settings) as client:
        # A file is read again for a retry (the Idempotency-Key makes that safe); stdin is not.
        batch = _checked(
            _patiently(
                lambda: client.post(
                    "/v1/batches",
                    params=params,
                    headers=headers,
                    content=ndjson_body(file, settings),
                ),
                retry=file != "-",
            )
        ).json()
        typer.echo(json.dumps(batch))
        if wait or output:
            batch = _wait(client, batch["id"])
        if output:
            _download(client, batch["id"], output, errors_only=False)


def _wait(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    columns = (
        TextColumn("[bold]{task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("batch", total=None, status="waiting")
        while True:
            answer = _patiently(lambda: client.get(f"/v1/batches/{batch_id}"))
            batch: dict[str, Any] = _checked(answer).json()
            counts = batch["request_counts"]
            done = counts["total"] - counts["pending"]
            progress.update(bar, total=counts["total"], completed=done, status=batch["status"])
            if batch["status"] in OVER:
                return batch
            time.sleep(1.0)


def _download(client: httpx.Client, batch_id: str, output: Path | None, errors_only: bool) -> None:
    params = {"only": "errors"} if errors_only else {}
    with client.stream("GET", f"/v1/batches/{batch_id}/results", params=params) as response:
        _checked(response)
        if response.headers.get("inferq-results-complete") != "true":
            console.print(
                f"[yellow]batch {batch_id} is {response.headers.get('inferq-batch-status')}: "
                "these are the lines finished so far[/yellow]"
            )
        out = output.open("wb") if output else sys.stdout.buffer
        try:
            for chunk in response.iter_bytes():
                out.write(chunk)
        finally:
            if output:
                out.close()
    if output:
        console.print(f"results written to {output}")


@app.command("status")
def status(batch_id: str) -> None:
    """The batch object (status, request_counts, timestamps) as JSON."""
    with _client(get_settings()) as client:
        typer.echo(json.dumps(_checked(client.get(f"/v1/batches/{batch_id}")).json(), indent=2))


@app.command("results")
def results(
    batch_id: str,
    output: Annotated[Path | None, typer.Option(help="Write here (default: stdout).")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Only the lines that failed.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the batch to end first.")] = False,
) -> None:
    """The batch's results as NDJSON, one line per input in input order."""
    with _client(get_settings()) as client:
        if wait:
            _wait(client, batch_id)
        _download(client, batch_id, output, errors_only=errors)


@app.command("list")
def list_batches(limit: Annotated[int, typer.Option(min=1, max=100)] = 20) -> None:
    """Your batches, newest first."""
    with _client(get_settings()) as client:
        page = _checked(client.get("/v1/batches", params={"limit": limit})).json()
    for batch in page["data"]:
        counts = batch["request_counts"]
        typer.echo(
            f"{batch['id']}  {batch['status']:<11} {batch['task']:<10} "
            f"{counts['total'] - counts['pending']}/{counts['total']}  {batch['created_at']}"
        )


@app.command("cancel")
def cancel(batch_id: str) -> None:
    """Cancel what has not run; what runs now keeps its result."""
    with _client(get_settings()) as client:
        batch = _checked(client.post(f"/v1/batches/{batch_id}/cancel")).json()
    typer.echo(json.dumps(batch))
