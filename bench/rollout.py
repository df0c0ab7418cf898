"""What a rollout costs a worker: micro-batches of SST-2 sentences through
``core.jobs.execute.run_batch`` (claim, cache, model, record, and the rollout's after-batch work),
in process against a fresh PostgreSQL database, with the shipped MiniLM champion and:

- ``none``: no rollout (the baseline);
- ``canary``: a challenger serving 10 % of inputs;
- ``shadow``: a challenger run beside the champion on every input, off the result path;
- ``shadow25``: the same on a quarter of the inputs.

The challenger is a trained version copied into a temporary model store: ``--challenger DIR``
(e.g. a MiniLM version from ``inferq models train sentiment --arch transformer``), else a
``logreg`` version trained here in seconds. Every round sends fresh sentences (no cache hits).
Also reported: the worker's resident memory after each mode, with the versions it holds loaded.

    python -m bench.rollout --rounds 3 --batch 128 [--challenger var/models/sentiment-transformer/V]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from bench.common import emit, machine_facts, quiet_logging
from core.broker import RunItems
from core.config import Settings
from core.db.session import Database
from core.inference.engine import InferenceEngine
from core.inference.strategies.run import read_card, train_artefact
from core.inference.versions import models_root
from core.jobs import outbox
from core.jobs.execute import Delivery, Worker, run_batch
from core.jobs.submit import JobRequest, Submission, submit_many
from core.rollout import changes
from core.rollout.state import CACHE
from core.security.tenants import ensure_tenant
from tests.services import fresh_postgres_database

SST2 = Path(__file__).resolve().parents[1] / "data" / "sst2"
ACTOR = "bench:rollout"


def sentences() -> Iterator[str]:
    """SST-2 dev then train phrases, each once: an endless supply of cache misses."""
    for name in ("dev.tsv", "train.tsv"):
        with (SST2 / name).open(encoding="utf-8") as lines:
            next(lines)
            for line in lines:
                text = line.split("\t")[0].strip()
                if len(text.split()) >= 5:
                    yield text


def challenger(store: Path, given: Path | None) -> str:
    if given is not None:
        card = read_card(given)
        target = models_root(store) / f"sentiment-{card['arch']}" / str(card["version"])
        shutil.copytree(given, target)
        return str(card["version"])
    trained = train_artefact(
        "sentiment",
        "logreg",
        data_dir=SST2,
        out_root=models_root(store) / "sentiment-logreg",
        params={"inverse_regularisation": 1.0},
    )
    return str(trained.card["version"])


def one_batch(worker: Worker, tenant_id: int, texts: list[str]) -> float:
    deliveries: list[Delivery] = []

    def hand_to_worker(_app: Any, entries: Sequence[RunItems], **_options: Any) -> None:
        deliveries.extend(Delivery(uuid.UUID(e.job_id), list(e.item_ids)) for e in entries)

    outbox.send_run_items = hand_to_worker  # type: ignore[attr-defined,assignment]
    with worker.database.transaction() as session:
        submit_many(
            session, worker.settings, [Submission(tenant_id, JobRequest("sentiment", texts))]
        )
    began = time.perf_counter()
    report = run_batch(worker, deliveries)
    seconds = time.perf_counter() - began
    assert report.written == len(texts), report
    return seconds


def set_mode(database: Database, store: Path, mode: str, version: str) -> None:
    """The modes in order: none (nothing to do), canary, shadow (the canary stopped), shadow25."""
    with database.transaction() as session:
        if mode == "canary":
            changes.set_canary(session, store, "sentiment", version, 10, ACTOR)
        elif mode == "shadow":
            changes.stop(session, "sentiment", ACTOR)
            changes.set_shadow(session, store, "sentiment", version, 100, ACTOR)
        elif mode == "shadow25":
            changes.set_shadow(session, store, "sentiment", version, 25, ACTOR)
    CACHE.clear()


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--challenger", type=Path, default=None)
    args = parser.parse_args()
    quiet_logging()
    supply = sentences()
    modes = ("none", "canary", "shadow", "shadow25")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, fresh_postgres_database("inferq_bench") as url:
        from tests.conftest import migrated

        store = Path(tmp)
        version = challenger(store, args.challenger)
        database = migrated(url)
        settings = Settings(
            database_url=url, data_dir=store, chunk_size=args.batch, max_inputs_per_job=4096
        )
        worker = Worker(database, InferenceEngine("cpu", data_dir=store), settings)
        with database.transaction() as session:
            tenant_id = ensure_tenant(session, "bench").id
        one_batch(worker, tenant_id, list(islice(supply, args.batch)))  # warm: models, plans
        for mode in modes:
            set_mode(database, store, mode, version)
            one_batch(worker, tenant_id, list(islice(supply, args.batch)))  # load its versions
            seconds = [
                one_batch(worker, tenant_id, list(islice(supply, args.batch)))
                for _ in range(args.rounds)
            ]
            median = statistics.median(seconds)
            results[mode] = {
                "items_per_second": args.batch / median,
                "batch_seconds": seconds,
                "rss_mb": rss_mb(),
                "loaded_versions": [v for _, v in worker.engine.loaded_versions()],
            }
        database.engine.dispose()
    base = results["none"]["items_per_second"]
    for mode in modes:
        results[mode]["vs_none"] = results[mode]["items_per_second"] / base
    emit(
        "rollout",
        params={**vars(args), "challenger": str(args.challenger or "logreg (trained here)")},
        machine=machine_facts(),
        results={"challenger_version": version, **results},
        targets={},
        table=[
            (
                f"{mode}: items/s, vs none, RSS",
                f"{results[mode]['items_per_second']:.1f}, {results[mode]['vs_none']:.2f}x, "
                f"{results[mode]['rss_mb']:.0f} MB",
            )
            for mode in modes
        ],
    )


if __name__ == "__main__":
    main()
