"""The bulk door, measured: throughput of a batch end to end against the strict bare loop, peak
memory of the API during a 1M-line upload and of `inferq process` on a 1M-line file, and fair
share between a big and a small batch. Distributed mode (PostgreSQL, Redis, `inferq serve`,
`worker`, `beat`), one fresh stack per measurement.

1. **Throughput.** ``--n`` distinct SST-2 texts (20,000) as one ``POST /v1/batches``, timed from
   the first byte sent to the batch ``completed``; then the stack is stopped and the strict bare
   loop runs in this process: the same primary adapter the worker serves, over all texts sorted
   by length, in passes of 64 (the least padding any loop can have). efficiency = bare seconds /
   batch seconds. Measured twice, with the batch's length sorting on and off
   (INFERQ_BATCH_SORT_BY_LENGTH): their ratio is what sorting a batch's windows by length gains.
2. **Memory.** Peak RSS (VmHWM) of the API process over a ``--big`` (1,000,000) line upload, and
   of ``inferq process`` on a file of as many lines (embedded mode: SQLite and the in-process
   worker, the README's first command). Both inputs repeat 100 texts that are cached first, so a
   million lines finish in minutes here; the upload's lines/s is reported too.
3. **Fair share.** Seconds for a 1,000-line batch of another tenant alone, then submitted while a
   ``--fair-big`` (100,000) line batch runs; the big one is cancelled afterwards.

    python -m bench.bulk                 # everything (about 25 minutes on 2 cores)
    python -m bench.bulk --only throughput
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    REPO,
    BenchError,
    Stack,
    emit,
    install_signal_handlers,
    load_texts,
    log,
    machine_facts,
    quiet_logging,
    rate,
    running_stack,
)

NDJSON = {"Content-Type": "application/x-ndjson"}
OVER = ("completed", "failed", "cancelled", "expired")
TARGETS = {"throughput_efficiency": 0.95, "peak_rss_mb": 200}


@contextmanager
def env(**values: str) -> Iterator[None]:
    """INFERQ_* settings for the stack started inside (running_stack passes them through)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def client(stack: Stack, key: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=stack.api_url,
        headers={"Authorization": f"Bearer {key or stack.api_key}"},
        timeout=httpx.Timeout(60.0, read=1800.0),
    )


def ndjson_chunks(texts: Iterator[str], chunk_lines: int = 4096) -> Iterator[bytes]:
    buffer: list[str] = []
    for i, text in enumerate(texts):
        buffer.append(json.dumps({"id": str(i), "text": text}))
        if len(buffer) >= chunk_lines:
            yield ("\n".join(buffer) + "\n").encode()
            buffer.clear()
    if buffer:
        yield ("\n".join(buffer) + "\n").encode()


def submit(http: httpx.Client, texts: Iterator[str], task: str = "sentiment") -> dict[str, Any]:
    response = http.post(
        "/v1/batches", params={"task": task}, headers=NDJSON, content=ndjson_chunks(texts)
    )
    if response.status_code != 202:
        raise BenchError(f"upload refused: {response.status_code} {response.text[:500]}")
    batch: dict[str, Any] = response.json()
    return batch


def wait_over(http: httpx.Client, batch_id: str, timeout: float = 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch: dict[str, Any] = http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in OVER:
            return batch
        time.sleep(0.1)
    raise BenchError(f"batch {batch_id} did not end in {timeout} s")


# ------------------------------------------------------------------------------ 1. throughput


def batch_seconds(texts: list[str], sort: bool) -> tuple[float, dict[str, Any]]:
    with env(INFERQ_BATCH_SORT_BY_LENGTH=str(sort).lower()), running_stack() as stack:
        with client(stack) as http:
            started = time.perf_counter()
            batch = submit(http, iter(texts))
            done = wait_over(http, batch["id"])
            seconds = time.perf_counter() - started
        if done["request_counts"]["completed"] != len(texts):
            raise BenchError(f"not every line succeeded: {done['request_counts']}")
        log(f"batch of {len(texts)} ({'sorted' if sort else 'input order'}): {seconds:.1f}s")
        return seconds, done


def bare_sorted_seconds(texts: list[str], passes_of: int = 64) -> tuple[float, str]:
    """The worker's primary adapter over every text sorted by length, passes of ``passes_of``."""
    from core.inference.registry import get_task

    module_name, class_name = get_task("sentiment").chain[0].adapter.split(":")
    model = getattr(importlib.import_module(module_name), class_name).load(device="cpu")
    ordered = sorted(texts, key=len)
    model.predict(ordered[:passes_of])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(ordered), passes_of):
        model.predict(ordered[start : start + passes_of])
    seconds = time.perf_counter() - started
    log(f"bare sorted loop ({model.name}): {seconds:.1f}s")
    return seconds, str(model.name)


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    texts = load_texts(args.n)
    sorted_run, _ = batch_seconds(texts, sort=True)
    unsorted_run, _ = batch_seconds(texts, sort=False)
    bare, adapter = bare_sorted_seconds(texts)
    return {
        "n": args.n,
        "adapter": adapter,
        "batch_seconds": round(sorted_run, 2),
        "batch_unsorted_seconds": round(unsorted_run, 2),
        "bare_sorted_seconds": round(bare, 2),
        "batch_texts_per_s": round(rate(args.n, sorted_run), 1),
        "bare_texts_per_s": round(rate(args.n, bare), 1),
        "efficiency": round(bare / sorted_run, 4),
        "efficiency_unsorted": round(bare / unsorted_run, 4),
        "sorting_gain": round(unsorted_run / sorted_run, 4),
    }


# ------------------------------------------------------------------------------ 2. memory


def repeated(texts: list[str], n: int) -> Iterator[str]:
    for i in range(n):
        yield texts[i % len(texts)]


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far (kernel-kept, nothing to sample)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM for {pid}")


def api_upload_memory(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    with env(INFERQ_API_WORKERS="1"), running_stack() as stack:
        api_pid = stack.processes["api"].pid
        with client(stack) as http:
            wait_over(http, submit(http, iter(texts))["id"])  # cache the texts first
            before = peak_rss_mb(api_pid)
            started = time.perf_counter()
            batch = submit(http, repeated(texts, args.big))
            seconds = time.perf_counter() - started
            after = peak_rss_mb(api_pid)
            done = wait_over(http, batch["id"])
    log(
        f"API upload of {args.big:,} lines: {seconds:.1f}s, peak RSS {before:.0f} -> {after:.0f} MB"
    )
    return {
        "lines": args.big,
        "upload_seconds": round(seconds, 2),
        "upload_lines_per_s": round(rate(args.big, seconds), 1),
        "api_peak_rss_mb_before": round(before, 1),
        "api_peak_rss_mb": round(after, 1),
        "batch_status_after_upload": batch["status"],
        "batch_status": done["status"],
    }


def process_memory(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    """``inferq process`` in embedded mode, measured from a child of a child: ru_maxrss of
    RUSAGE_CHILDREN is the peak of the largest finished child, so the measuring process must not
    have run anything else."""
    work = Path(tempfile.mkdtemp(prefix="inferq-bulk-"))
    try:
        small, big = work / "warm.jsonl", work / "big.jsonl"
        small.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        with big.open("w") as handle:
            for i, text in enumerate(repeated(texts, args.big)):
                handle.write(json.dumps({"id": str(i), "text": text}) + "\n")
        run_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")},
            "INFERQ_DATA_DIR": str(work / "var"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        command = [sys.executable, "-m", "cli", "process"]
        subprocess.run(
            [*command, str(small), "--output", str(work / "warm.out")],
            env=run_env,
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=600,
        )
        measure = (
            "import resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL)\n"
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        out = subprocess.run(
            [sys.executable, "-c", measure, *command, str(big), "--output", str(work / "big.out")],
            env=run_env,
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
            timeout=7200,
        ).stdout.split()
        seconds, peak_kb = float(out[0]), int(out[1])
        with (work / "big.out").open("rb") as handle:
            written = sum(1 for _ in handle)
        if written != args.big:
            raise BenchError(f"inferq process wrote {written} lines of {args.big}")
        log(
            f"inferq process on {args.big:,} lines: {seconds:.1f}s, "
            f"peak RSS {peak_kb / 1024:.0f} MB"
        )
        return {
            "lines": args.big,
            "seconds": round(seconds, 2),
            "lines_per_s": round(rate(args.big, seconds), 1),
            "peak_rss_mb": round(peak_kb / 1024, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def memory(args: argparse.Namespace) -> dict[str, Any]:
    texts = load_texts(100, offset=30_000)
    return {"api_upload": api_upload_memory(args, texts), "process": process_memory(args, texts)}


# ------------------------------------------------------------------------------ 3. fair share


def fair_share(args: argparse.Namespace) -> dict[str, Any]:
    pool = load_texts(20_000)
    small_alone = [f"{t} (alone)" for t in pool[:1000]]
    small_beside = [f"{t} (beside)" for t in pool[1000:2000]]
    with running_stack() as stack:
        other = stack.run("keys", "create", "other").splitlines()[-1].strip()
        with client(stack) as alice, client(stack, other) as bob:
            started = time.perf_counter()
            wait_over(bob, submit(bob, iter(small_alone))["id"])
            alone = time.perf_counter() - started
            big = submit(alice, (f"{pool[i % len(pool)]} #{i}" for i in range(args.fair_big)))
            time.sleep(5)  # the big batch is running
            started = time.perf_counter()
            wait_over(bob, submit(bob, iter(small_beside))["id"])
            beside = time.perf_counter() - started
            big_then = alice.get(f"/v1/batches/{big['id']}").json()["request_counts"]
            alice.post(f"/v1/batches/{big['id']}/cancel")
    log(f"fair share: 1,000 lines alone {alone:.1f}s, beside {args.fair_big:,}: {beside:.1f}s")
    return {
        "small_lines": 1000,
        "big_lines": args.fair_big,
        "small_alone_seconds": round(alone, 2),
        "small_beside_big_seconds": round(beside, 2),
        "slowdown": round(beside / alone, 3),
        "big_pending_when_small_finished": big_then["pending"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--fair-big", type=int, default=100_000)
    parser.add_argument("--only", choices=["throughput", "memory", "fair"], action="append")
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()
    machine = machine_facts()
    parts = args.only or ["throughput", "memory", "fair"]
    results: dict[str, Any] = {}
    if "throughput" in parts:
        results["throughput"] = throughput(args)
    if "memory" in parts:
        results["memory"] = memory(args)
    if "fair" in parts:
        results["fair_share"] = fair_share(args)
    table: list[tuple[str, Any]] = []
    if "throughput" in results:
        t = results["throughput"]
        table += [
            (f"batch of {t['n']:,} vs bare sorted loop", t["efficiency"]),
            ("  without length sorting", t["efficiency_unsorted"]),
            ("  sorting gain", t["sorting_gain"]),
        ]
    if "memory" in results:
        m = results["memory"]
        table += [
            ("API peak RSS MB, 1M-line upload", m["api_upload"]["api_peak_rss_mb"]),
            ("upload lines/s", m["api_upload"]["upload_lines_per_s"]),
            ("inferq process peak RSS MB, 1M lines", m["process"]["peak_rss_mb"]),
        ]
    if "fair_share" in results:
        f = results["fair_share"]
        table += [
            ("1,000 lines alone s", f["small_alone_seconds"]),
            (f"1,000 lines beside {f['big_lines']:,} s", f["small_beside_big_seconds"]),
        ]
    emit(
        "bulk",
        params=vars(args),
        machine=machine,
        results=results,
        targets=TARGETS,
        table=table,
    )


if __name__ == "__main__":
    main()
