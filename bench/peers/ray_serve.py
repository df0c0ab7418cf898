"""Ray Serve as a peer of inferq: the same model on the same machine under the same load client.

The deployment wraps the very ``SentimentTransformer`` inferq's worker runs (loaded inside the
replica, on the CPU, at inferq's configured precision: ``get_settings().precision``, so
``INFERQ_PRECISION`` is honoured) behind Ray Serve's own HTTP proxy, with Ray's dynamic batching
(``@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.025)``). ``bench.load.run_scenarios``
then drives it exactly as it drives inferq: single-text requests from 32 closed-loop clients
(capacity), single-text requests open loop at half that capacity (latency), and 100-text requests
from 32 clients (bulk).

The ingress is what a Ray user naturally writes, after Ray's batching guide: ``__call__`` takes
the Starlette request, and a request of many texts submits each text to the batched method
(``await asyncio.gather(*(self.classify(t) for t in texts))``), so a 100-text request is cut into
Ray's batches of at most 32 alongside every other request's texts, exactly as single-text
requests are; nothing is special-cased for big requests. The batched method calls the model
synchronously, as Ray's guide does. ``max_ongoing_requests`` is raised from Ray's default (5,
which would cap every batch at 5) to 64, as Ray's guide asks when batching (at least
``max_batch_size`` x ``max_concurrent_batches``).

Processes and cores. ``ray.init`` starts a local single-node Ray with ``num_cpus`` = the cores
this process may use, ``include_dashboard=False``, its services on 127.0.0.1 only (see
``bench.peers``; Serve's replica also opens an unused inter-deployment gRPC listener on every
interface, hard-coded in Ray), its own temporary folder, and a small object store. Serve adds
a controller and an HTTP proxy (each a Python process, 0 logical CPUs in Ray's accounting), and
the replica(s). Ray's own processes (GCS, raylet, the runtime-env and metrics agents, controller,
proxy) share the machine's cores with the replica: on the 2-core VM the proxy alone takes a
visible share under load, as inferq's API, Redis and PostgreSQL do beside its worker. Startup
takes tens of seconds there, so every wait is long but bounded.

Torch threads. By default there is one replica holding all the cores (``num_cpus`` = cores), so
Ray sets its ``OMP_NUM_THREADS`` to the core count and torch in the replica uses every core:
torch's own default, nothing set by this module. The replica reports what torch actually used
(``results.server``). inferq's benchmark worker (``INFERQ_TORCH_THREADS`` unset) uses the same
cores split differently: one prefork process per core, each with ``cores / processes`` torch
threads (``workers/app.py``). ``--replicas N`` gives N replicas of ``cores / N`` CPUs each
(torch threads = floor of that, at least 1); ``--replicas`` = cores is that layout.

Texts (``text_layout``). All passes and rounds use distinct SST-2 texts from
``bench.common.load_texts``; with R rounds, S single texts, B bulk texts, pool size H and base
``--offset`` K, round r (0-based) takes:

* single:    ``load_texts(S, offset=K + r*S)``
* bulk:      ``load_texts(B, offset=K + R*S + r*B)``
* half load: ``load_texts(H, offset=K + R*(S + B) + r*H)`` (its first ``capacity/2 x seconds``)

H defaults to what is left of the corpus split evenly between the rounds (905 at the full size
above, 3 rounds, offset 0). Ray caches nothing, so the texts only matter for running both systems
on the same ones: a caller that lays inferq's texts out with ``text_layout`` and gives Ray the
same arguments sends both the same texts. A half load that needs more than H texts (capacity
above ``2 x H / seconds`` texts/s) goes round the pool again (``Cycled``); each round records
how many it sent and how many were distinct (``half_load_texts``).

    python -m bench.peers.ray_serve --single 2000 --half-load-seconds 20 --bulk 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

import httpx
import ray
from ray import serve
from starlette.requests import Request

from bench.common import (
    REPO,
    BenchError,
    _corpus,
    base_params,
    emit,
    free_port,
    install_signal_handlers,
    load_texts,
    log,
    machine_facts,
    quiet_logging,
)
from bench.load import http_client, medians, run_scenarios

MAX_BATCH_SIZE = 32
BATCH_WAIT_TIMEOUT_S = 0.025
MAX_ONGOING_REQUESTS = 64  # per replica; Ray's default (5) would cap every batch at 5
BULK_REQUEST_SIZE = 100
APP_NAME = "inferq-peer-sentiment"
OBJECT_STORE_BYTES = 256 * 1024**2  # nothing big goes through it; keep the shared VM's memory
STARTUP_TIMEOUT_S = 600.0
LABELS = frozenset({"negative", "positive"})


# ---------------------------------------------------------------------------------- deployment


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
class SentimentDeployment:
    """inferq's sentiment model behind Ray Serve, batched by Ray.

    ``POST /`` with ``{"texts": [...]}`` answers ``[{"label", "score"}, ...]``, one per text, in
    order; ``GET /facts`` answers what this replica runs with (torch threads, precision);
    ``GET /batches`` the sizes of the batches Ray handed the model since the last such call."""

    def __init__(self, precision: str) -> None:
        import torch

        from core.inference.transformer import SentimentTransformer

        self.model = SentimentTransformer.load(device="cpu", precision=precision)
        self.facts = {
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "precision_setting": precision,
            "precision": self.model.precision,  # as resolved on this CPU (auto -> bf16 or fp32)
            "model": self.model.name,
            "model_version": self.model.version,
            "runtime": "torch",
            "ray_assigned_cpus": _assigned_cpus(),
            "ray_node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
        }
        self.batch_sizes: Counter[int] = Counter()

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        self.batch_sizes[len(texts)] += 1
        return [
            {"label": prediction.label, "score": prediction.score}
            for prediction in self.model.predict(texts)
        ]

    async def __call__(self, request: Request) -> Any:
        if request.method == "GET":  # the benchmark's own questions, not the load
            if request.url.path.rstrip("/").endswith("/batches"):
                sizes, self.batch_sizes = self.batch_sizes, Counter()
                return {"pid": os.getpid(), "sizes": dict(sizes)}
            return self.facts
        texts: list[str] = (await request.json())["texts"]
        return await asyncio.gather(*(self.classify(text) for text in texts))


def _assigned_cpus() -> float | None:
    resources = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
    cpus = resources.get("CPU")
    return float(cpus) if cpus is not None else None


# -------------------------------------------------------------------------------------- target


class RayTarget:
    """bench.load.Target for the deployment: one ``POST /`` per request, every text in it."""

    name = "ray-serve"

    async def infer(self, http: httpx.AsyncClient, texts: list[str]) -> list[dict[str, Any]]:
        response = await http.post("/", json={"texts": texts})
        if response.status_code != 200:
            raise BenchError(f"POST / answered {response.status_code}: {response.text[:300]}")
        results = response.json()
        if not isinstance(results, list) or not all(
            isinstance(row, dict) and row.get("label") in LABELS and "score" in row
            for row in results
        ):
            raise BenchError(f"unexpected answer: {response.text[:300]}")
        return results


# ------------------------------------------------------------------------------------- server


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def running_ray_serve(
    *,
    replicas: int = 1,
    num_cpus: int | None = None,
    precision: str | None = None,
    startup_timeout: float = STARTUP_TIMEOUT_S,
    keep_logs: bool = False,
) -> Iterator[str]:
    """A local Ray with the deployment running; yields the proxy's base URL (127.0.0.1).

    ``num_cpus`` defaults to the cores this process may use; each of the ``replicas`` gets
    ``num_cpus / replicas`` of them. ``precision`` defaults to inferq's setting
    (``INFERQ_PRECISION``). Serve and Ray are shut down, whatever happens, in ``finally``; Ray's
    logs are kept (and their folder named on stderr) when something failed or ``keep_logs``.
    While Ray runs, ``sys.stdout`` is sent to stderr: Ray prints its processes' messages there
    at any time, and a benchmark's stdout is its JSON record."""
    from core.config import get_settings

    cores = num_cpus or usable_cores()
    precision = precision or get_settings().precision
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="inferq-ray-")  # short: Ray's socket paths must fit
    env_vars = {
        # Replicas import core.inference from this checkout whatever the caller's cwd.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false"),
    }
    ok = False
    started = time.perf_counter()
    # Ray prints its processes' messages on stdout at any time; stdout carries the JSON record.
    with contextlib.redirect_stdout(sys.stderr):
        log(f"ray: starting a local Ray ({cores} CPUs, {replicas} replica(s), logs in {temp_dir})")
        try:
            ray.init(
                address="local",
                num_cpus=cores,
                include_dashboard=False,
                log_to_driver=False,  # stdout carries the JSON record only
                object_store_memory=OBJECT_STORE_BYTES,
                runtime_env={"env_vars": env_vars},
                _temp_dir=temp_dir,
            )
            node_ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
            log(f"ray: {ray.__version__} up, node address {node_ip}")
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app = SentimentDeployment.options(  # type: ignore[attr-defined]
                num_replicas=replicas, ray_actor_options={"num_cpus": cores / replicas}
            ).bind(precision)
            _bounded(
                lambda: serve.run(app, name=APP_NAME, route_prefix="/"),
                startup_timeout,
                "Ray Serve did not deploy the model",
            )
            base_url = f"http://127.0.0.1:{port}"
            _wait_until_answers(base_url, started + startup_timeout)
            log(f"ray: serving at {base_url} after {time.perf_counter() - started:.1f}s")
            yield base_url
            ok = True
        finally:
            try:
                if ray.is_initialized():
                    serve.shutdown()  # type: ignore[no-untyped-call]
            finally:
                ray.shutdown()
                if ok and not keep_logs:
                    shutil.rmtree(temp_dir, ignore_errors=True)
                else:
                    _dump_logs(temp_dir)
                    log(f"ray: logs kept in {temp_dir}")


def _bounded(call: Callable[[], object], timeout: float, what: str) -> None:
    """``call()`` in a thread, waited for at most ``timeout`` seconds (serve.run has no timeout;
    if it hangs, the caller's ``finally`` shuts Ray down under it)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="serve-run", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BenchError(f"{what} within {timeout:.0f}s")
    if errors:
        raise BenchError(f"{what}: {errors[0]!r}") from errors[0]


def _wait_until_answers(base_url: str, deadline: float) -> None:
    """Until the proxy routes a request to a replica and the model answers."""
    last = "no answer"
    with httpx.Client(base_url=base_url, timeout=30) as http:
        while time.perf_counter() < deadline:
            try:
                response = http.post("/", json={"texts": ["ray serve is answering"]})
                if response.status_code == 200 and len(response.json()) == 1:
                    return
                last = f"{response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
    raise BenchError(f"Ray Serve at {base_url} did not answer in time ({last})")


def _dump_logs(temp_dir: str) -> None:
    """The tail of Ray's Serve logs and its workers' stderr, for a failed start or run."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    files = sorted(logs.glob("serve/*.log")) + sorted(logs.glob("worker-*.err"))
    for path in files:
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").strip().splitlines()[-15:]
            if tail:
                print(f"--- {path.name}\n" + "\n".join(tail), file=sys.stderr)


def replica_facts(base_url: str, replicas: int) -> list[dict[str, Any]]:
    """What each replica reported (``GET /facts``; several tries to reach every replica)."""
    seen: dict[int, dict[str, Any]] = {}
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for _ in range(max(1, 4 * replicas)):
            response = http.get("/facts")
            response.raise_for_status()
            facts = response.json()
            seen[facts["pid"]] = facts
            if len(seen) == replicas:
                break
    return list(seen.values())


async def take_batch_sizes(http: httpx.AsyncClient, replicas: int) -> dict[str, Any]:
    """The batches Ray formed since the last call, over every replica reached (``GET /batches``
    resets each replica's count; with several replicas, up to 8 tries a replica reach them)."""
    sizes: Counter[int] = Counter()
    seen: set[int] = set()
    for _ in range(max(1, 8 * replicas)):
        response = await http.get("/batches")
        response.raise_for_status()
        answer = response.json()
        seen.add(answer["pid"])
        sizes.update({int(size): count for size, count in answer["sizes"].items()})
        if len(seen) == replicas:
            break
    batches = sum(sizes.values())
    items = sum(size * count for size, count in sizes.items())
    return {
        "batches": batches,
        "items": items,
        "mean_items_per_batch": round(items / batches, 2) if batches else None,
        "max_items_per_batch": max(sizes, default=None),
        "full_batches": sizes.get(MAX_BATCH_SIZE, 0),
        "replicas_seen": len(seen),
    }


def inferq_runtime_here() -> str | None:
    """The runtime inferq's transformer tiers would pick on this machine (``INFERQ_RUNTIME``,
    ``auto`` by default: ONNX Runtime on a CPU where torch would run fp32). The Ray peer always
    runs the torch ``SentimentTransformer``; where inferq would pick ONNX the two do not run the
    same runtime. None when this checkout cannot say."""
    try:
        import importlib.util

        from core.config import get_settings
        from core.inference.onnx_transformer import choose_runtime
        from core.inference.transformer import cpu_has_native_bf16

        settings = get_settings()
        return str(
            choose_runtime(
                settings.runtime,
                "cpu",
                settings.precision,
                gpu_visible=False,
                cpu_native_bf16=cpu_has_native_bf16(),
                onnx_installed=importlib.util.find_spec("onnxruntime") is not None,
            )
        )
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


# -------------------------------------------------------------------------------------- texts


@dataclass(frozen=True)
class TextLayout:
    """Where each round's texts start in the corpus (see the module docstring)."""

    rounds: int
    single: int
    bulk: int
    half_load_pool: int
    offset: int

    def single_offset(self, round_index: int) -> int:
        return self.offset + round_index * self.single

    def bulk_offset(self, round_index: int) -> int:
        return self.offset + self.rounds * self.single + round_index * self.bulk

    def half_load_offset(self, round_index: int) -> int:
        base = self.offset + self.rounds * (self.single + self.bulk)
        return base + round_index * self.half_load_pool

    @property
    def end(self) -> int:
        return self.half_load_offset(self.rounds)

    def texts(self, round_index: int) -> tuple[list[str], list[str], list[str]]:
        """(single, half_load, bulk) texts of round ``round_index`` (0-based)."""
        return (
            load_texts(self.single, offset=self.single_offset(round_index)),
            load_texts(self.half_load_pool, offset=self.half_load_offset(round_index)),
            load_texts(self.bulk, offset=self.bulk_offset(round_index)),
        )

    def offsets(self, round_index: int) -> dict[str, int]:
        return {
            "single": self.single_offset(round_index),
            "half_load": self.half_load_offset(round_index),
            "bulk": self.bulk_offset(round_index),
        }


def text_layout(
    rounds: int, single: int, bulk: int, offset: int = 0, half_load_pool: int | None = None
) -> TextLayout:
    """The texts of ``rounds`` rounds from ``offset`` on; the half-load pool of each round is by
    default what is left of the corpus split evenly between the rounds."""
    available = len(_corpus(6))  # load_texts' default min_words
    if half_load_pool is None:
        half_load_pool = (available - offset - rounds * (single + bulk)) // max(1, rounds)
    layout = TextLayout(rounds, single, bulk, half_load_pool, offset)
    if half_load_pool < 1 or layout.end > available:
        raise BenchError(
            f"{rounds} rounds of {single} single + {bulk} bulk texts from offset {offset} "
            f"leave no half-load pool of {half_load_pool} in the {available} texts available"
        )
    return layout


class Cycled(Sequence[str]):
    """A round's half-load pool, again and again once used up: the half load takes the first
    ``capacity / 2 x seconds`` texts of what it is given, and at full size the corpus leaves too
    few for a fast server (3 rounds of 2000 + 10000 leave 905 a round: enough up to 90 texts/s of
    capacity). Ray caches nothing, so a repeated text costs what a new one does; each round
    records how many texts the half load sent and how many of them were distinct."""

    def __init__(self, pool: Sequence[str], length: int = 1_000_000) -> None:
        if not pool:
            raise BenchError("an empty half-load pool")
        self._pool = list(pool)
        self._length = max(length, len(self._pool))

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if not -self._length <= index < self._length:
            raise IndexError(index)
        return self._pool[index % self._length % len(self._pool)]


# ------------------------------------------------------------------------------------ measure


def measure_ray(
    rounds: int,
    single: int,
    half_load_seconds: float,
    bulk: int,
    clients: int,
    offset: int,
    *,
    half_load_pool: int | None = None,
    replicas: int = 1,
    bulk_request_size: int = BULK_REQUEST_SIZE,
    timeout: float = 1800,
    keep_logs: bool = False,
    layout: Any = None,
) -> dict[str, Any]:
    """Start Ray Serve, run ``bench.load.run_scenarios`` ``rounds`` times on fresh texts (laid out
    by ``text_layout``; one Ray instance, warmed up once, serves every round), shut Ray down.

    Returns every round, the medians across rounds (single-request texts/s, half-load p50 and
    p99, bulk texts/s), what the replicas ran with, the text layout and ``ok`` (no request
    failed). Synchronous: call it outside any running event loop. ``layout`` (anything with
    ``TextLayout``'s fields and methods, a dataclass) replaces ``text_layout``'s, so a caller
    can drive Ray with exactly the texts it gave inferq."""
    layout = layout or text_layout(rounds, single, bulk, offset, half_load_pool)
    inferq_runtime = inferq_runtime_here()
    if inferq_runtime != "torch":
        log(f"ray: inferq would run its model on {inferq_runtime} here; the Ray peer runs torch")
    log(
        f"ray: texts {layout.offset}..{layout.end} "
        f"(half-load pool {layout.half_load_pool} per round)"
    )
    started = time.perf_counter()
    with running_ray_serve(replicas=replicas, keep_logs=keep_logs) as base_url:
        startup_seconds = time.perf_counter() - started
        server = replica_facts(base_url, replicas)
        measured = asyncio.run(
            _rounds(
                base_url, layout, half_load_seconds, clients, bulk_request_size, timeout, replicas
            )
        )
    failed = sum(
        round_["half_load"]["failed"] + round_.get("bulk", {}).get("failed", 0)
        for round_ in measured
    )
    return {
        "system": RayTarget.name,
        "ray_version": ray.__version__,
        "deployment": {
            "replicas": replicas,
            "cpus_per_replica": usable_cores() / replicas,
            "max_batch_size": MAX_BATCH_SIZE,
            "batch_wait_timeout_s": BATCH_WAIT_TIMEOUT_S,
            "max_ongoing_requests": MAX_ONGOING_REQUESTS,
            "startup_seconds": round(startup_seconds, 1),
        },
        "server": server,
        "inferq_runtime_here": inferq_runtime,
        "layout": asdict(layout),
        "rounds": measured,
        "median": medians(measured),
        "ok": failed == 0,
    }


async def _rounds(
    base_url: str,
    layout: TextLayout,
    half_load_seconds: float,
    clients: int,
    bulk_request_size: int,
    timeout: float,
    replicas: int,
) -> list[dict[str, Any]]:
    target = RayTarget()
    results: list[dict[str, Any]] = []
    async with http_client(base_url) as http:
        await _warm_up(target, http, clients, bulk_request_size)
        for index in range(layout.rounds):
            single, half_load, bulk = layout.texts(index)
            log(f"ray: round {index + 1} of {layout.rounds}")
            await take_batch_sizes(http, replicas)  # start the count afresh
            scenarios = await run_scenarios(
                target,
                http,
                single=single,
                half_load=Cycled(half_load),
                bulk=bulk,
                clients=clients,
                bulk_request_size=bulk_request_size,
                half_load_seconds=half_load_seconds,
                timeout=timeout,
            )
            sent = int(scenarios["half_load"]["requests"])
            texts = {"sent": sent, "distinct": min(sent, len(half_load))}
            if sent > len(half_load):
                log(f"ray: the half load sent {sent} texts, {len(half_load)} distinct (repeated)")
            results.append(
                {
                    "round": index + 1,
                    "offsets": layout.offsets(index),
                    "half_load_texts": texts,
                    **scenarios,
                    # The model's batches over the whole round (single + half load + bulk).
                    "batches": await take_batch_sizes(http, replicas),
                }
            )
            batches = results[-1]["batches"]
            log(
                f"ray: round {index + 1}: {_headline(scenarios)}; "
                f"{batches['mean_items_per_batch']} texts per model batch"
            )
    return results


async def _warm_up(target: RayTarget, http: httpx.AsyncClient, clients: int, size: int) -> None:
    """A few batches of every shape before measuring (Ray caches nothing, so any text will do;
    these are made up so they never overlap the measured ones)."""
    texts = [f"warm up number {i} of the model before the measured rounds" for i in range(size)]
    await asyncio.gather(*(target.infer(http, [text]) for text in texts[: 2 * clients]))
    await asyncio.gather(*(target.infer(http, texts) for _ in range(2)))


def _headline(scenarios: dict[str, Any]) -> str:
    half = scenarios["half_load"]
    line = (
        f"single {scenarios['single']['texts_per_s']:.1f} texts/s, half load "
        f"p50 {half['p50_ms']:.0f} ms p99 {half['p99_ms']:.0f} ms"
    )
    if "bulk" in scenarios:
        line += f", bulk {scenarios['bulk']['texts_per_s']:.1f} texts/s"
    return line


# ---------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=2000, help="single-text requests a round")
    parser.add_argument("--half-load-seconds", type=float, default=20.0)
    parser.add_argument("--bulk", type=int, default=10_000, help="texts sent in bulk a round")
    parser.add_argument("--bulk-request-size", type=int, default=BULK_REQUEST_SIZE)
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--offset", type=int, default=0, help="first text (see text_layout)")
    parser.add_argument(
        "--half-load-pool",
        type=int,
        default=None,
        help="texts set aside per round for the half load (default: what is left, split evenly)",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="replicas, each with cores / replicas CPUs"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for each load")
    parser.add_argument("--keep-logs", action="store_true", help="keep Ray's log folder")
    args = parser.parse_args()
    install_signal_handlers()
    quiet_logging()
    machine = machine_facts()
    result = measure_ray(
        args.rounds,
        args.single,
        args.half_load_seconds,
        args.bulk,
        args.clients,
        args.offset,
        half_load_pool=args.half_load_pool,
        replicas=args.replicas,
        bulk_request_size=args.bulk_request_size,
        timeout=args.timeout,
        keep_logs=args.keep_logs,
    )
    median = result["median"]
    server = result["server"][0] if result["server"] else {}
    emit(
        "ray_serve",
        params=base_params(args),
        machine=machine,
        results=result,
        targets={"comparison": "inferq / ray-serve on the same texts (bench/small_jobs.py)"},
        table=[
            ("ray", result["ray_version"]),
            ("replicas x torch threads", f"{args.replicas} x {server.get('torch_threads')}"),
            ("precision", server.get("precision")),
            ("rounds", args.rounds),
            ("single texts/s (median)", median["single_texts_per_s"]),
            ("half load offered/s (median)", median["half_load_offered_per_s"]),
            ("half load p50 ms (median)", median["half_load_p50_ms"]),
            ("half load p99 ms (median)", median["half_load_p99_ms"]),
            ("bulk texts/s (median)", median["bulk_texts_per_s"]),
            ("items per model batch (median)", median["mean_items_per_batch"]),
            ("every request answered", result["ok"]),
        ],
    )
    if not result["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
