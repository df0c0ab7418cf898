"""What one refresh of the backlog metrics costs PostgreSQL: the single grouped statement of
``core.telemetry.backlog`` (pending items by task and priority, results since the last refresh,
open webhook deliveries, the newest result id) on a database of realistic size.

A fresh PostgreSQL database is filled with ``--finished`` finished items (with their results)
and ``--pending`` queued items, in jobs of ``--job-size`` over two tasks and both priorities;
then the statement runs ``--rounds`` times as a refresh would, ``--since`` results after the
previous one. The figure is the median wall time of one refresh, as seen from Python.

    python -m bench.backlog_query --finished 1000000 --pending 50000 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time

from sqlalchemy import text

from bench.common import emit, machine_facts, quiet_logging
from core.telemetry.backlog import read_database
from tests.conftest import migrated
from tests.services import fresh_postgres_database

SEED = """
INSERT INTO tenants (name, created_at) VALUES ('bench', now());
INSERT INTO jobs (id, tenant_id, task, status, priority, request_hash, total_items, created_at,
                  updated_at)
SELECT gen_random_uuid(), (SELECT id FROM tenants), CASE WHEN g % 2 = 0 THEN 'sentiment'
       ELSE 'topic' END, CASE WHEN g <= :pending_jobs THEN 'queued' ELSE 'succeeded' END,
       CASE WHEN g % 4 < 2 THEN 'interactive' ELSE 'bulk' END, 'h', :job_size,
       now() - make_interval(secs => g), now()
FROM generate_series(1, :jobs) AS g;
INSERT INTO job_items (job_id, index, text, input_hash, status, attempts, updated_at)
SELECT j.id, i, 'some text', md5(j.id::text || i), CASE WHEN j.status = 'queued' THEN 'queued'
       ELSE 'succeeded' END, 0, now()
FROM jobs j CROSS JOIN generate_series(0, :job_size - 1) AS i;
INSERT INTO results (item_id, job_id, task, input_hash, model, version, tier, degraded, cached,
                     created_at)
SELECT i.id, i.job_id, j.task, i.input_hash, 'm', '1', 'primary', false, false, now()
FROM job_items i JOIN jobs j ON j.id = i.job_id WHERE i.status = 'succeeded' ORDER BY i.id;
ANALYZE;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=50_000)
    parser.add_argument("--job-size", type=int, default=50)
    parser.add_argument("--since", type=int, default=5_000, help="results since the last refresh")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    quiet_logging()
    machine = machine_facts()
    pending_jobs = args.pending // args.job_size
    jobs = pending_jobs + args.finished // args.job_size
    with fresh_postgres_database("inferq_bench") as url:
        database = migrated(url)
        started = time.perf_counter()
        with database.transaction() as session:
            for statement in SEED.split(";\n"):
                if statement.strip():
                    params = {"jobs": jobs, "pending_jobs": pending_jobs, "job_size": args.job_size}
                    session.execute(text(statement), params)
        seed_seconds = time.perf_counter() - started
        head = read_database(database, None).head or 0
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            reading = read_database(database, head - args.since)
            times.append((time.perf_counter() - started) * 1000)
        database.dispose()
    assert sum(reading.backlog.values()) == pending_jobs * args.job_size
    assert sum(reading.finished.values()) == args.since
    median = statistics.median(times)
    emit(
        "backlog_query",
        params=vars(args),
        machine=machine,
        results={
            "refresh_ms_median": median,
            "refresh_ms_min": min(times),
            "refresh_ms_max": max(times),
            "seed_seconds": seed_seconds,
        },
        targets={"refresh_ms_median": "< 1000 (one refresh per INFERQ_BACKLOG_CACHE_SECONDS)"},
        table=[
            ("finished items / pending items", f"{args.finished:,} / {args.pending:,}"),
            ("refresh, median ms", median),
            ("refresh, min..max ms", f"{min(times):.1f}..{max(times):.1f}"),
        ],
    )


if __name__ == "__main__":
    main()
