"""Per task, in one run: the task's primary adapter one input at a time vs batched in this
process, and the same inputs end to end through the job path, with the ratios.

- ``single``: ``predict([text])`` for each of ``--n-single`` inputs (default 200);
- ``batched``: ``predict(chunk)`` over chunks of ``--batch`` (default: the task's
  ``forward_max_items`` in its Settings batch policy, 64 unless configured) of ``--n`` inputs
  (default 1000), in the order they were drawn;
- ``pipeline``: the same ``--n`` inputs as jobs of ``--job-size`` (256) through a real stack
  (``bench.common.running_stack``: ``inferq serve`` -> PostgreSQL outbox -> Redis -> ``inferq
  worker``, prefork with one process per core -> PostgreSQL), from the first POST to the last
  job seen terminal, i.e. to every result stored;
- ratios ``batched_vs_single`` and ``pipeline_vs_batched`` (and ``pipeline_vs_single``) of the
  texts/s.

Both in-process modes run first, one task at a time (its model loaded, warmed up, measured,
released), with no stack running, at torch's own thread count. Then one stack, whose worker
warms every task that loaded (``INFERQ_WARM_TASKS``), takes each task's jobs in turn. The stack
has a fresh database and an empty Redis db 9 (broker and result cache) and a task's inputs are
distinct after the product's normalisation, so no result comes from the cache (``cached``: 0
in the JSON). A task whose primary cannot load here is skipped with the reason; the rest run.

Inputs: deduplicated, then ``--n`` evenly spaced through the file (single's ``--n-single`` evenly
spaced through those): sentiment and embed from data/sst2/test.tsv (872 texts), topic from
data/agnews/test.tsv (7,594), ner from data/ner/test.jsonl (178), langid from
data/langid/eval.tsv (2,804). A file with fewer texts than ``--n`` gives all it has (``n`` in the
JSON): ner's 178 make its pipeline figure mostly start-up and polling.

    python -m bench.tasks > bench/results/tasks.json 2> bench/results/tasks.log
    python -m bench.tasks --tasks ner,langid --n 200 --modes single,batched
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.batching_gain import set_threads
from bench.common import (
    REPO,
    BenchError,
    JobClient,
    Stack,
    add_stack_arguments,
    base_params,
    chunked,
    emit,
    install_signal_handlers,
    log,
    machine_facts,
    quiet_logging,
    rate,
    run_jobs,
    running_stack,
    stack_options,
    summarise,
)

MODES = ("single", "batched", "pipeline")
DATA = REPO / "data"
WARM_UP_SINGLE = 8


# ---------------------------------------------------------------------------------- inputs


def _tsv_first_column(path: Path, header: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row[0] for row in rows if row and row[0] != header]


def _agnews() -> list[str]:
    from core.inference.topic import iter_agnews  # repairs AG News's broken entities

    return [text for text, _ in iter_agnews(DATA / "agnews" / "test.tsv")]


def _ner() -> list[str]:
    from core.inference.ner import read_ner_set

    return [text for text, _ in read_ner_set(DATA / "ner" / "test.jsonl")]


def _langid() -> list[str]:
    from core.inference.langid_eval import read_langid_set

    return [text for text, _ in read_langid_set(DATA / "langid" / "eval.tsv")]


def _sst2() -> list[str]:
    return _tsv_first_column(DATA / "sst2" / "test.tsv", header="sentence")


INPUTS: dict[str, Callable[[], list[str]]] = {
    "sentiment": _sst2,
    "embed": _sst2,
    "topic": _agnews,
    "ner": _ner,
    "langid": _langid,
}


def distinct(texts: Iterable[str]) -> list[str]:
    """The texts that differ after the product's normalisation (its cache key), in file order,
    so that no job's input can be answered from another's result."""
    from core.inference.preprocess import normalise

    seen: set[str] = set()
    kept: list[str] = []
    for text in texts:
        key = normalise(text)
        if key and key not in seen:
            seen.add(key)
            kept.append(text)
    return kept


def spread(texts: Sequence[str], n: int) -> list[str]:
    """``n`` texts evenly spaced through ``texts`` (all of them if there are fewer): a file in
    some order (langid's is sorted, so its first lines are all Korean and Japanese) gives a
    sample of the whole file, the same one every run."""
    if n >= len(texts):
        return list(texts)
    return [texts[index * len(texts) // n] for index in range(n)]


# ------------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", default=None, help="comma-separated (default: every task)")
    parser.add_argument("--modes", default=",".join(MODES), help="of single,batched,pipeline")
    parser.add_argument("--n", type=int, default=1000, help="inputs of batched and pipeline")
    parser.add_argument("--n-single", type=int, default=200, help="inputs of single")
    parser.add_argument("--batch", type=int, default=None, help="rows per batched predict")
    parser.add_argument(
        "--threads", type=int, default=None, help="in-process torch/ONNX threads (torch's own)"
    )
    parser.add_argument("--job-size", type=int, default=256, help="inputs per job")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent POSTs")
    parser.add_argument("--priority", default="bulk", choices=("bulk", "interactive"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per task's jobs")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    args.modes = [mode.strip() for mode in str(args.modes).split(",") if mode.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown or not args.modes:
        parser.error(f"--modes takes some of {','.join(MODES)}, not {unknown or 'nothing'}")
    if args.tasks is not None:
        args.tasks = [name.strip() for name in str(args.tasks).split(",") if name.strip()]
    return args


def chosen_tasks(
    requested: list[str] | None, known: Iterable[str]
) -> tuple[list[str], dict[str, str]]:
    """The tasks to run, in the registry's order (or as asked), and those skipped at once."""
    known = list(known)
    names = requested if requested is not None else known
    skipped = {name: "not a task of the registry" for name in names if name not in known}
    skipped |= {
        name: "no benchmark inputs for this task"
        for name in names
        if name in known and name not in INPUTS
    }
    return [name for name in names if name not in skipped], skipped


# ---------------------------------------------------------------------------------- ratios


def ratios(rates: dict[str, float]) -> dict[str, float | None]:
    """batched / single and pipeline / batched (and pipeline / single) from texts/s by mode;
    None where a mode did not run."""

    def over(top: str, bottom: str) -> float | None:
        high, low = rates.get(top), rates.get(bottom)
        return round(high / low, 3) if high and low else None

    return {
        "batched_vs_single": over("batched", "single"),
        "pipeline_vs_batched": over("pipeline", "batched"),
        "pipeline_vs_single": over("pipeline", "single"),
    }


# ------------------------------------------------------------------------------ in process


class Skipped(Exception):
    """A task that cannot be measured here (its primary does not load); the message says why."""


def load_primary(task: str) -> tuple[Any, float]:
    from core.inference.registry import adapter_class, get_task

    started = time.perf_counter()
    try:
        model = adapter_class(get_task(task).chain[0]).load(device="cpu")
    except Exception as exc:  # a missing artefact, package or model: skip, saying which
        raise Skipped(f"primary did not load: {type(exc).__name__}: {exc}") from exc
    return model, time.perf_counter() - started


def timed(work: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    results = work()
    return time.perf_counter() - started, results


def in_process(task: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Load the task's primary, warm it up and run the in-process modes asked for (the model is
    released when this returns: the caller collects it before the next task loads)."""
    from core.config import get_settings

    batch = args.batch or get_settings().batch_policy(task).forward_max_items
    model, load_seconds = load_primary(task)
    log(f"{task}: {type(model).__name__} loaded in {load_seconds:.1f}s")
    figures: dict[str, Any] = {
        "adapter": f"{type(model).__module__}:{type(model).__name__}",
        "version": getattr(model, "version", None),
        "precision": getattr(model, "precision", None),
        "runtime": getattr(model, "runtime", None),
        "load_seconds": round(load_seconds, 2),
    }
    model.predict(texts[:batch])  # first calls allocate and tune kernels, batched and single
    for text in texts[:WARM_UP_SINGLE]:
        model.predict([text])
    if "single" in args.modes:
        single = spread(texts, args.n_single)
        seconds, done = timed(lambda: sum(len(model.predict([text])) for text in single))
        figures["single"] = mode_figures(len(single), done, seconds)
    if "batched" in args.modes:
        chunks = chunked(texts, batch)
        seconds, done = timed(lambda: sum(len(model.predict(chunk)) for chunk in chunks))
        figures["batched"] = {"batch": batch, **mode_figures(len(texts), done, seconds)}
    return figures


def mode_figures(n: int, results: int, seconds: float) -> dict[str, Any]:
    if results != n:  # an adapter must answer every input once
        raise RuntimeError(f"{results} predictions for {n} inputs")
    return {"n": n, "seconds": round(seconds, 3), "texts_per_s": round(rate(n, seconds), 2)}


# -------------------------------------------------------------------------------- pipeline


def pipeline(stack: Stack, task: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The task's inputs as jobs on the running stack, until every job is terminal."""
    batches_before = stack.worker_log_events("batch_done")

    async def go() -> list[Any]:
        async with JobClient(stack.api_url, stack.api_key, task=task) as client:
            return await run_jobs(
                client,
                chunked(texts, args.job_size),
                priority=args.priority,
                submitters=args.submitters,
                timeout=args.timeout,
            )

    summary = summarise(asyncio.run(go()))
    log(f"{task}: pipeline {summary.seconds:.2f}s, statuses {summary.statuses}")
    batches = stack.worker_log_events("batch_done")[len(batches_before) :]
    items = sum(int(event.get("items", 0)) for event in batches)
    return {
        "n": len(texts),
        "seconds": round(summary.seconds, 3),
        "texts_per_s": round(rate(len(texts), summary.seconds), 2),
        "server_side_seconds": server_seconds(stack, task),
        **{key: value for key, value in summary.as_dict().items() if key != "seconds"},
        "worker_batches": len(batches),
        "worker_mean_items_per_batch": round(items / len(batches), 1) if batches else None,
    }


def server_seconds(stack: Stack, task: str) -> float | None:
    """The task's jobs, first created_at to last finished_at, by the database's clock."""
    rows = stack.sql(
        "SELECT EXTRACT(EPOCH FROM (MAX(finished_at) - MIN(created_at))) FROM jobs "
        f"WHERE task = '{task}'"  # a registry name: [a-z][a-z0-9_]*
    )
    value = rows[0][0] if rows else None
    return round(float(value), 3) if value is not None else None


def run_pipelines(
    tasks: dict[str, list[str]], args: argparse.Namespace
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """One stack whose worker warms every task; each task's jobs in turn. Also what the
    worker's pool processes reported once warm (threads, tiers they could not load)."""
    os.environ["INFERQ_WARM_TASKS"] = json.dumps(list(tasks))  # reaches the stack's processes
    figures: dict[str, dict[str, Any]] = {}
    with running_stack(**stack_options(args)) as stack:
        warm = stack.worker_log_events("worker_warm")
        worker = {
            "warm_tasks": list(tasks),
            "pool_processes": len(warm),
            "torch_threads": warm[-1].get("torch_threads") if warm else None,
            "unavailable": warm[-1].get("unavailable") if warm else None,
        }
        for task, texts in tasks.items():
            figures[task] = pipeline(stack, task, texts, args)
    return figures, worker


# ------------------------------------------------------------------------------------ main


def main() -> None:
    args = parse_args()
    install_signal_handlers()
    quiet_logging()
    threads = set_threads(args.threads)

    from core.inference.registry import all_tasks

    names, skipped = chosen_tasks(args.tasks, all_tasks())
    machine = machine_facts()
    results: dict[str, dict[str, Any]] = {}
    inputs: dict[str, list[str]] = {}
    for task in names:
        try:
            texts = spread(distinct(INPUTS[task]()), args.n)
            results[task] = {"n_inputs": len(texts), **in_process(task, texts, args)}
        except Exception as exc:  # recorded: the other tasks still run
            skipped[task] = str(exc) if isinstance(exc, Skipped) else f"failed: {exc!r}"
            log(f"{task}: skipped: {skipped[task]}")
            continue
        finally:
            gc.collect()  # the model just measured, before the next one loads
        inputs[task] = texts
    worker: dict[str, Any] = {}
    if "pipeline" in args.modes and inputs:
        pipelines, worker = run_pipelines(inputs, args)
        for task, figures in pipelines.items():
            results[task]["pipeline"] = figures
    for figures in results.values():
        rates = {mode: figures[mode]["texts_per_s"] for mode in MODES if mode in figures}
        figures["ratios"] = ratios(rates)
    report(args, machine, results, skipped, threads, worker)
    incomplete = [task for task, figures in results.items() if not pipeline_ok(figures)]
    if incomplete:
        raise BenchError(f"pipeline of {incomplete}: not every input answered once, uncached")


def pipeline_ok(figures: dict[str, Any]) -> bool:
    """Every job succeeded with one result per input, none from the cache (or no pipeline)."""
    run = figures.get("pipeline")
    return run is None or (run["complete"] and run["results"] == run["n"] and run["cached"] == 0)


def report(
    args: argparse.Namespace,
    machine: dict[str, Any],
    tasks: dict[str, dict[str, Any]],
    skipped: dict[str, str],
    threads: int,
    worker: dict[str, Any],
) -> None:
    def texts_per_s(figures: dict[str, Any], mode: str) -> str:
        return f"{figures[mode]['texts_per_s']:>9,.1f}" if mode in figures else f"{'-':>9}"

    def ratio(value: float | None) -> str:
        return f"{value:>7.2f}x" if value is not None else f"{'-':>8}"

    table: list[tuple[str, Any]] = [
        ("texts/s", f"{'single':>9} {'batched':>9} {'pipeline':>9}  batch/1  pipe/batch  n"),
    ]
    for task, figures in tasks.items():
        row = " ".join(texts_per_s(figures, mode) for mode in MODES)
        row += f" {ratio(figures['ratios']['batched_vs_single'])}"
        row += f" {ratio(figures['ratios']['pipeline_vs_batched'])}    {figures['n_inputs']}"
        table.append((task, row))
    table += [(task, f"skipped: {reason}") for task, reason in skipped.items()]
    if worker:
        table.append(
            (
                "threads",
                f"{threads} in process; worker {worker['pool_processes']} processes "
                f"x {worker['torch_threads']}",
            )
        )
    emit(
        "tasks",
        params=base_params(args),
        machine=machine,
        results={
            "torch_threads_in_process": threads,
            "worker": worker,
            "tasks": tasks,
            "skipped": skipped,
            "all_pipelines_complete_uncached": all(map(pipeline_ok, tasks.values())),
        },
        targets={},
        table=table,
    )


if __name__ == "__main__":
    main()
