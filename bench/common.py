"""Shared pieces of the benchmarks: texts, machine facts, a distributed stack, an HTTP job
client, and the JSON + table output.

The stack is started exactly as a user starts it (``inferq serve|worker|beat`` subprocesses)
against a fresh PostgreSQL database and Redis db 9; everything is torn down, and the database
dropped, however the benchmark ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import ctypes
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg

from tests import services

REPO = Path(__file__).resolve().parent.parent
SST2_FILES = (REPO / "data" / "sst2" / "train.tsv", REPO / "data" / "sst2" / "dev.tsv")
PG_ADMIN = os.environ.get("INFERQ_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST_URL = os.environ.get("INFERQ_BENCH_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = 9  # the benchmarks' own db: flushed before and after every run
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MAX_LONG_POLL_SECONDS = 30.0  # the API's default INFERQ_MAX_WAIT_SECONDS
RoundT = TypeVar("RoundT")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class BenchError(RuntimeError):
    """The benchmark could not produce a trustworthy number (a service failed or timed out)."""


# --------------------------------------------------------------------------------------- texts


@cache
def _corpus(min_words: int) -> tuple[str, ...]:
    """Distinct SST-2 phrases with at least ``min_words`` words, train then dev, file order.

    Deduplicated on the product's own normalisation, so no two texts share a cache key."""
    from core.inference.preprocess import normalise

    seen: set[str] = set()
    texts: list[str] = []
    for path in SST2_FILES:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(reader)  # header
            for row in reader:
                text = normalise(row[0]) if row else ""
                if len(text.split()) >= min_words and text not in seen:
                    seen.add(text)
                    texts.append(text)
    return tuple(texts)


def load_texts(n: int, *, offset: int = 0, min_words: int = 6) -> list[str]:
    """``n`` distinct texts, deterministic: the same arguments always give the same list."""
    corpus = _corpus(min_words)
    if offset + n > len(corpus):
        raise BenchError(
            f"asked for texts {offset}..{offset + n} but SST-2 train+dev has only "
            f"{len(corpus)} distinct phrases of >= {min_words} words"
        )
    return list(corpus[offset : offset + n])


def chunked(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


# ------------------------------------------------------------------------------ machine facts


def machine_facts() -> dict[str, Any]:
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        # INFERQ_* settings of this shell (they reach a benchmark's stack; URLs left out).
        "inferq_env": {
            key: value
            for key, value in sorted(os.environ.items())
            if key.startswith("INFERQ_") and not key.endswith("_URL")
        },
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        # The records this run rewrites (bench/results) do not make the code dirty.
        "git_dirty": bool(
            _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
        ),
    }


def _cpu_model() -> str | None:
    """Model name, family and model number from /proc/cpuinfo (Linux): a VM's host can change."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields = dict(re.findall(r"^(model name|cpu family|model)\s*:\s*(.*)$", text, re.MULTILINE))
    if not fields:
        return None
    name, family, model = (fields.get(key, "?") for key in ("model name", "cpu family", "model"))
    return f"{name} (family {family}, model {model})"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


# -------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


# ----------------------------------------------------------------------------------- output


def emit(
    name: str,
    *,
    params: dict[str, Any],
    machine: dict[str, Any],
    results: dict[str, Any],
    targets: dict[str, Any],
    table: Sequence[tuple[str, Any]],
) -> None:
    """One JSON object on stdout (the record), a small human table on stderr."""
    document = {
        "benchmark": name,
        "params": params,
        "machine": machine,
        "results": results,
        "targets": targets,
    }
    print(json.dumps(_finite(document), indent=2, default=str, allow_nan=False), flush=True)
    width = max((len(label) for label, _ in table), default=0)
    lines = [
        f"== {name} ({machine.get('cpus_usable')} cpus, load {machine.get('load_average_1_5_15')})"
    ]
    lines += [f"  {label:<{width}}  {_fmt(value)}" for label, value in table]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _finite(value: Any) -> Any:
    """NaN and infinities become null: the output must be strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP raise SystemExit so every ``finally`` (stop processes, drop the database)
    runs; SIGINT already raises KeyboardInterrupt."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def quiet_logging() -> None:
    """Product code logs (structlog) go to stderr at WARNING, never onto the JSON on stdout."""
    from core.telemetry.logging import configure_logging

    configure_logging("WARNING", "json")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ stack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: receive SIGTERM if the benchmark process dies (even SIGKILL),
    so no worker outlives a killed benchmark. Linux only; elsewhere the finally blocks do it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Stack:
    """Environment and processes of one distributed inferq deployment under benchmark."""

    env: dict[str, str]
    work_dir: Path
    database_url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_url: str = ""
    api_key: str = ""
    worker_metrics_port: int = 0

    def run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"inferq {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout.strip()

    def start(
        self, name: str, *args: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_file = (self.work_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env={**self.env, **(extra_env or {})},
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we stop pool children with it
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
        )
        log_file.close()
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.work_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str, name: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise BenchError(f"{name} exited ({process.returncode}):\n{self.log(name)[-3000:]}")
            if condition():
                return
            time.sleep(0.2)
        raise BenchError(
            f"timed out after {timeout}s waiting for {what}:\n{self.log(name)[-3000:]}"
        )

    def start_api(self, workers: int | None = None) -> None:
        port = free_port()
        self.start(
            "api", "serve", "--port", str(port), *(["--workers", str(workers)] if workers else [])
        )
        self.api_url = f"http://127.0.0.1:{port}"
        self.wait_for(lambda: _healthy(self.api_url), 90, "the API to answer /healthz", "api")

    def start_worker(self, concurrency: int | None = None) -> None:
        # Pool children write metrics here; keeping it inside work_dir means it is cleaned up.
        metrics_dir = self.work_dir / "worker-metrics"
        metrics_dir.mkdir(exist_ok=True)
        self.start(
            "worker",
            "worker",
            "--pool",
            "prefork",
            *(["--concurrency", str(concurrency)] if concurrency else []),
            extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        )

        def warm() -> bool:  # every pool process has loaded its model
            text = self.log("worker")
            processes = concurrency or os.cpu_count() or 1  # the product's default: one per core
            return text.count('"worker_warm"') >= processes and "worker_ready" in text

        self.wait_for(warm, 300, "the worker to load its model", "worker")

    def start_beat(self) -> None:
        self.start("beat", "beat")
        self.wait_for(lambda: "beat" in self.log("beat").lower(), 60, "beat to start", "beat")

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop_all(self) -> None:
        # Beat and API first, so nothing new reaches the worker while it shuts down.
        for name in sorted(self.processes, key=lambda n: n == "worker"):
            self.stop(name)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        url = self.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as conn:
            return list(conn.execute(query).fetchall())

    def worker_metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples (all pool children merged), name{labels} -> value."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.worker_metrics_port}/", timeout=5).text
        except httpx.HTTPError:
            return {}
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    samples[key] = float(value)
        return samples

    def worker_log_events(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log("worker").splitlines():
            if f'"{event}"' not in line:
                continue
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) used so far, by part: each stack process group (the API,
    the worker's main process, its pool children, beat), and every PostgreSQL and Redis server
    process on this machine (the services are shared: run on an otherwise idle machine). Taken
    before and after a pass, the difference is what the pass cost each part."""
    ticks = os.sysconf("SC_CLK_TCK")
    groups = {process.pid: name for name, process in stack.processes.items()}
    used: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pgid, seconds = int(fields[2]), (int(fields[11]) + int(fields[12])) / ticks
        if pgid in groups:
            name = groups[pgid]
            part = name if int(entry.name) == pgid else f"{name} children"
        elif command.startswith("postgres"):
            part = "postgresql"
        elif command.startswith("redis-server"):
            part = "redis"
        else:
            continue
        used[part] = used.get(part, 0.0) + seconds
    return used


def cpu_per_item_ms(
    before: dict[str, float], after: dict[str, float], items: int
) -> dict[str, float]:
    """CPU milliseconds per item by part between two ``cpu_seconds`` readings, largest first."""
    spent = {part: after.get(part, 0.0) - before.get(part, 0.0) for part in after}
    spent["total"] = sum(spent.values())
    return {
        part: round(seconds * 1000 / items, 3)
        for part, seconds in sorted(spent.items(), key=lambda kv: -kv[1])
        if items
    }


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    # The test suite's helper: benchmarks start their stack exactly as the tests do.
    with services.fresh_postgres_database("inferq_bench", PG_ADMIN) as url:
        try:
            yield url
        finally:
            log(f"dropping database {url.rsplit('/', 1)[1]}")


@contextmanager
def fresh_redis_db() -> Iterator[str]:
    with services.fresh_redis_db(REDIS_DB, REDIS_HOST_URL) as url:
        yield url


def stack_env(
    database_url: str,
    redis_url: str,
    work_dir: Path,
    metrics_port: int,
    torch_threads: int | None = None,
) -> dict[str, str]:
    env = {
        **os.environ,
        "INFERQ_DATABASE_URL": database_url,
        "INFERQ_BROKER_URL": redis_url,
        "INFERQ_DATA_DIR": str(work_dir / "data"),
        # INFO: the worker announces readiness ("worker_warm") and each batch at this level.
        "INFERQ_LOG_LEVEL": "INFO",
        "INFERQ_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
        "INFERQ_METRICS_PORT": str(metrics_port),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # Benchmarks measure throughput, not the per-tenant limits a deployment sets.
        "INFERQ_RATE_LIMITS": os.environ.get("INFERQ_RATE_LIMITS", ""),
        "INFERQ_MAX_PENDING_INPUTS_PER_TENANT": os.environ.get(
            "INFERQ_MAX_PENDING_INPUTS_PER_TENANT", "100000000"
        ),
    }
    # Unset by default: torch in the worker picks its own thread count (all cores), as a user's
    # would. Other INFERQ_* settings in the environment (INFERQ_BATCHING, ...) do reach the stack.
    env.pop("INFERQ_TORCH_THREADS", None)
    if torch_threads is not None:
        env["INFERQ_TORCH_THREADS"] = str(torch_threads)
    env.pop("INFERQ_CACHE_URL", None)  # the cache shares Redis db 9 with the broker
    return env


@contextmanager
def running_stack(
    *,
    keep_logs: bool = False,
    torch_threads: int | None = None,
    concurrency: int | None = None,
    api_workers: int | None = None,
) -> Iterator[Stack]:
    """Fresh database + Redis db 9 + ``inferq serve``, ``worker`` (prefork, ``concurrency``
    pool processes, 1 by default) and ``beat``, with one API key. On failure the tail of every
    log goes to stderr."""
    work_dir = Path(tempfile.mkdtemp(prefix="inferq-bench-"))
    failed = True
    stack: Stack | None = None
    try:
        with fresh_postgres_database() as database_url, fresh_redis_db() as redis_url:
            metrics_port = free_port()
            env = stack_env(database_url, redis_url, work_dir, metrics_port, torch_threads)
            stack = Stack(env, work_dir, database_url, worker_metrics_port=metrics_port)
            try:
                log(f"stack: database {database_url.rsplit('/', 1)[-1]}, redis db {REDIS_DB}")
                stack.run("db", "upgrade")
                stack.api_key = stack.run("keys", "create", "bench").splitlines()[-1].strip()
                stack.start_api(api_workers)
                stack.start_worker(concurrency)
                stack.start_beat()
                log(f"stack up: api {stack.api_url}, logs in {work_dir}")
                yield stack
                failed = False
            finally:
                if failed:
                    _dump_logs(stack)
                stack.stop_all()
    finally:
        if keep_logs or failed:
            log(f"logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


def _dump_logs(stack: Stack | None) -> None:
    if stack is None:
        return
    for name in ("api", "worker", "beat"):
        tail = stack.log(name)[-2500:]
        if tail:
            print(f"---- {name}.log (tail) ----\n{tail}", file=sys.stderr)


# ------------------------------------------------------------------------------ HTTP client


@dataclass
class JobRecord:
    """One job as the client saw it: when it was sent, accepted and seen terminal."""

    index: int
    inputs: int
    sent_at: float
    accepted_at: float = math.nan
    done_at: float = math.nan
    job_id: str = ""
    final: dict[str, Any] = field(default_factory=dict)


class JobClient:
    """A thin asyncio client of /v1/jobs. Every request has a timeout; nothing waits forever."""

    def __init__(
        self, base_url: str, api_key: str, *, connections: int = 100, task: str = "sentiment"
    ) -> None:
        self.task = task
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(MAX_LONG_POLL_SECONDS + 30),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def __aenter__(self) -> JobClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()

    async def submit(self, texts: list[str], priority: str) -> dict[str, Any]:
        body = {"task": self.task, "inputs": texts, "priority": priority}
        response = await self.http.post("/v1/jobs", json=body)
        if response.status_code != 202:
            raise BenchError(
                f"POST /v1/jobs answered {response.status_code}: {response.text[:500]}"
            )
        job: dict[str, Any] = response.json()
        return job

    async def wait(self, job_id: str, deadline: float) -> dict[str, Any]:
        """Long-poll until the job is terminal; BenchError at ``deadline`` (time.monotonic)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"job {job_id} not finished by the deadline")
            wait = min(MAX_LONG_POLL_SECONDS, max(remaining, 0.0))
            response = await self.http.get(f"/v1/jobs/{job_id}", params={"wait": f"{wait:.2f}"})
            if response.status_code != 200:
                raise BenchError(f"GET job answered {response.status_code}: {response.text[:500]}")
            job: dict[str, Any] = response.json()
            if job["status"] in TERMINAL:
                return job


async def run_jobs(
    client: JobClient,
    batches: list[list[str]],
    *,
    priority: str,
    submitters: int,
    timeout: float,
) -> list[JobRecord]:
    """Submit every batch as one job (``submitters`` POSTs in flight) and follow each to its end.

    A single follower long-polls the jobs one at a time, in the order they were accepted, so
    the benchmark's own polling adds one request at a time to the API, not one per job."""
    deadline = time.monotonic() + timeout
    records = [JobRecord(i, len(batch), math.nan) for i, batch in enumerate(batches)]
    accepted: asyncio.Queue[JobRecord | None] = asyncio.Queue()
    next_index = iter(range(len(batches)))

    async def submitter() -> None:
        for index in next_index:
            record = records[index]
            record.sent_at = time.perf_counter()
            job = await client.submit(batches[index], priority)
            record.accepted_at = time.perf_counter()
            record.job_id = job["id"]
            if job["status"] in TERMINAL:  # e.g. every input served from the cache at submit
                record.done_at, record.final = record.accepted_at, job
            await accepted.put(record)

    async def follower() -> None:
        while (record := await accepted.get()) is not None:
            if not record.final:
                record.final = await client.wait(record.job_id, deadline)
                record.done_at = time.perf_counter()

    follow = asyncio.create_task(follower())
    try:
        await asyncio.wait_for(
            asyncio.gather(*(submitter() for _ in range(max(1, submitters)))),
            timeout=max(deadline - time.monotonic(), 1),
        )
        await accepted.put(None)
        await asyncio.wait_for(follow, timeout=max(deadline - time.monotonic(), 1))
    except TimeoutError as exc:
        raise BenchError(f"jobs not finished within {timeout}s") from exc
    finally:
        follow.cancel()
    return records


@dataclass(frozen=True)
class PassSummary:
    seconds: float  # first POST sent -> last job seen terminal
    submit_seconds: float  # first POST sent -> last POST answered
    jobs: int
    statuses: dict[str, int]
    results: int
    cached: int
    tiers: dict[str, int]
    degraded: int
    errors: int
    complete: bool  # every job succeeded and every input has exactly one result

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarise(records: list[JobRecord]) -> PassSummary:
    start = min(r.sent_at for r in records)
    statuses = Counter(r.final.get("status", "unknown") for r in records)
    tiers: Counter[str] = Counter()
    results = cached = degraded = errors = 0
    complete = True
    for record in records:
        rows = record.final.get("results", [])
        results += len(rows)
        cached += sum(1 for row in rows if row.get("cached"))
        degraded += sum(1 for row in rows if row.get("degraded"))
        errors += len(record.final.get("errors", []))
        tiers.update(row.get("tier", "?") for row in rows)
        indices = sorted(row["index"] for row in rows)
        if record.final.get("status") != "succeeded" or indices != list(range(record.inputs)):
            complete = False
    return PassSummary(
        seconds=max(r.done_at for r in records) - start,
        submit_seconds=max(r.accepted_at for r in records) - start,
        jobs=len(records),
        statuses=dict(statuses),
        results=results,
        cached=cached,
        tiers=dict(tiers),
        degraded=degraded,
        errors=errors,
        complete=complete,
    )


def labels_in_order(records: list[JobRecord]) -> list[str | None]:
    """Every result's label, in the order the inputs were sent."""
    labels: list[str | None] = []
    for record in sorted(records, key=lambda r: r.index):
        by_index = {row["index"]: row.get("label") for row in record.final.get("results", [])}
        labels += [by_index.get(i) for i in range(record.inputs)]
    return labels


def server_side_seconds(stack: Stack) -> float | None:
    """Jobs' first created_at to last finished_at, by the database's clock."""
    rows = stack.sql("SELECT EXTRACT(EPOCH FROM (MAX(finished_at) - MIN(created_at))) FROM jobs")
    value = rows[0][0] if rows else None
    return float(value) if value is not None else None


def worker_batch_stats(stack: Stack) -> dict[str, Any]:
    """What the worker reported: batches, items per batch, time in the model vs the whole batch."""
    done = stack.worker_log_events("batch_done")
    flushed = Counter(e.get("reason", "?") for e in stack.worker_log_events("batch_flushed"))
    metrics = stack.worker_metrics()
    items = [int(e.get("items", 0)) for e in done]
    model_seconds = sum(v for k, v in metrics.items() if re.match(r"inferq_batch_seconds_sum\{", k))
    warm = stack.worker_log_events("worker_warm")
    return {
        # What each pool process set torch to (the worker logs it once warm).
        "torch_threads": warm[-1].get("torch_threads") if warm else None,
        "batches": len(done),
        "items": sum(items),
        "mean_items_per_batch": (sum(items) / len(items)) if items else None,
        "max_items_per_batch": max(items) if items else None,
        # run_batch from claimed to recorded (cache lookup + model + writing results).
        "batch_seconds_total": round(sum(float(e.get("seconds", 0)) for e in done), 3),
        # engine.run only (the model and its fallback chain).
        "model_seconds_total": round(model_seconds, 3) if metrics else None,
        "flush_reasons": dict(flushed),
    }


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's log folder")
    parser.add_argument(
        "--worker-torch-threads",
        type=int,
        default=None,
        help="INFERQ_TORCH_THREADS for the worker (default: unset, torch uses every core)",
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=None,
        help="pool processes of the one worker (default: the product's, one per core)",
    )
    parser.add_argument(
        "--api-workers",
        type=int,
        default=None,
        help="API processes (`inferq serve --workers`; default: the product's)",
    )


def add_pass_arguments(parser: argparse.ArgumentParser, rounds_help: str) -> None:
    """Options of a benchmark that submits N texts as jobs, in rounds on fresh stacks."""
    parser.add_argument("--n", type=int, default=10_000, help="distinct texts (default 10000)")
    parser.add_argument("--job-size", type=int, default=256, help="inputs per job")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent POSTs")
    parser.add_argument("--priority", default="bulk", choices=("bulk", "interactive"))
    parser.add_argument("--rounds", type=int, default=3, help=rounds_help)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for each pass")


def run_rounds(
    count: int, measure: Callable[[], RoundT], ratio: Callable[[RoundT], float], unit: str
) -> tuple[list[RoundT], RoundT]:
    """``count`` rounds of ``measure`` and the median one by ``ratio`` (the upper middle of an
    even count): its figures are the headline, every round is recorded."""
    rounds: list[RoundT] = []
    for number in range(1, max(1, count) + 1):
        log(f"round {number} of {count}")
        rounds.append(measure())
        log(f"round {number}: {ratio(rounds[-1]):.3f}{unit}")
    return rounds, sorted(rounds, key=ratio)[len(rounds) // 2]


def stack_options(args: argparse.Namespace) -> dict[str, Any]:
    """running_stack's keyword arguments from add_stack_arguments' options."""
    return {
        "keep_logs": args.keep_logs,
        "torch_threads": args.worker_torch_threads,
        "concurrency": args.worker_concurrency,
        "api_workers": args.api_workers,
    }


def base_params(args: Any) -> dict[str, Any]:
    return {key: value for key, value in vars(args).items() if not callable(value)}
