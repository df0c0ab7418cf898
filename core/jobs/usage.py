"""What each job used, and what that cost (``GET /v1/jobs/{id}``'s ``usage``, ``inferq usage``).

Usage is added in the transactions that record results (``core.jobs.lifecycle``). Each input
that gets its result there counts once: one input, one for the tier that served it, and either
one cached input (answered from the result cache, at submit or in a worker) or its estimated
tokens and its share of the model's wall time. Tokens are ``outbox.estimate_tokens`` (about four
characters each, the estimate batches are sized by), not the tokenizer's count: the tokenizer
lives inside the engine's tiers, and the rules tier has none.

A model call (one ``engine.run``: one task, one priority, items of many jobs) splits its wall
time over its inputs by their estimated tokens, since a long input holds the call longer than a
short one. Only inputs whose result is written in this transaction count (the lifecycle passes
the locked, unfinished ones), so a redelivered batch, or a result recorded twice, adds nothing:
usage bills each input once, while ``inferq_model_seconds_total`` counts every second the
models actually ran (a redelivery that runs a batch again did spend that time).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, Text, bindparam, cast, column, func, inspect, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from core.db.models import Job, Tenant
from schemas.jobs import ResultOut, TierCounts, Usage

if TYPE_CHECKING:
    from core.config import Settings
    from core.inference.engine import Output

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class ModelShare:
    """One input's part of a model call."""

    tokens: int
    seconds: float
    gpu: bool = False  # the call ran in a GPU worker


def split_seconds(seconds: float, tokens: Sequence[int]) -> list[float]:
    """``seconds`` over the inputs in proportion to their tokens (equally if none has any)."""
    total = sum(tokens)
    if total <= 0:
        return [seconds / len(tokens) for _ in tokens] if tokens else []
    return [seconds * count / total for count in tokens]


def shares(seconds: float, tokens: Sequence[int], *, gpu: bool) -> list[ModelShare]:
    return [
        ModelShare(count, part, gpu)
        for count, part in zip(tokens, split_seconds(seconds, tokens), strict=True)
    ]


@dataclass
class UsageDelta:
    """Usage to add to one job, in the job's column names less their ``usage_`` prefix."""

    inputs: int = 0
    cached: int = 0
    tokens: int = 0
    model_seconds: float = 0.0
    gpu_seconds: float = 0.0
    primary: int = 0
    fallback: int = 0
    rules: int = 0

    def add(self, output: Output, share: ModelShare | None) -> None:
        self.inputs += 1
        setattr(self, output.tier, getattr(self, output.tier) + 1)
        if output.cached:
            self.cached += 1
        elif share is not None:
            self.tokens += share.tokens
            self.model_seconds += share.seconds
            self.gpu_seconds += share.seconds if share.gpu else 0.0


_NAMES = [f.name for f in fields(UsageDelta)]
_TYPES: dict[str, Any] = {name: Job.__table__.c[f"usage_{name}"].type for name in _NAMES}


def deltas(
    served: Iterable[tuple[uuid.UUID, Output, ModelShare | None]],
) -> dict[uuid.UUID, UsageDelta]:
    """Per job, the usage of these (job, output, share) results."""
    by_job: dict[uuid.UUID, UsageDelta] = {}
    for job_id, output, share in served:
        by_job.setdefault(job_id, UsageDelta()).add(output, share)
    return by_job


def add_usage(session: Session, by_job: Mapping[uuid.UUID, UsageDelta]) -> None:
    """Add each job's usage in one UPDATE for all of them (the caller holds the jobs' locks).
    On PostgreSQL the values travel as one JSON document joined in ``UPDATE … FROM``, as
    ``core.db.bulk`` inserts do; elsewhere (SQLite, in process) as an executemany."""
    rows = [{"id": str(job_id), **vars(delta)} for job_id, delta in sorted(by_job.items())]
    if not rows:
        return
    jobs = Job.__table__
    assert isinstance(jobs, Table)
    if session.get_bind().dialect.name == "postgresql":
        document = cast(bindparam("usage_rows", json.dumps(rows), Text), postgresql.JSON)
        source = (
            func.json_to_recordset(document)
            .table_valued(column("id", jobs.c.id.type), *(column(n, _TYPES[n]) for n in _NAMES))
            .render_derived(with_types=True)
        )
        statement = (
            update(jobs)
            .where(jobs.c.id == source.c.id)
            .values({f"usage_{n}": jobs.c[f"usage_{n}"] + source.c[n] for n in _NAMES})
        )
        session.execute(statement)
        return
    statement = (
        update(jobs)
        .where(jobs.c.id == bindparam("u_id", type_=jobs.c.id.type))
        .values({f"usage_{n}": jobs.c[f"usage_{n}"] + bindparam(f"u_{n}") for n in _NAMES})
    )
    session.execute(
        statement,
        [{"u_id": uuid.UUID(row["id"]), **{f"u_{n}": row[n] for n in _NAMES}} for row in rows],
    )


def job_usage(job: Job, results: Iterable[ResultOut | None]) -> Usage:
    """The job's usage from its row. A job the submit has just written is answered without
    reading its row back (``core.jobs.submit``): its usage is then exactly its results, all
    answered from the cache there."""
    if _USAGE_ATTRIBUTES & inspect(job).unloaded:
        served = [result for result in results if result is not None]
        return Usage(
            inputs=len(served),
            cached_inputs=sum(result.cached for result in served),
            tiers=TierCounts(**{t: sum(r.tier == t for r in served) for t in _TIERS}),
        )
    return _usage(
        job.usage_inputs,
        job.usage_cached,
        job.usage_tokens,
        job.usage_model_seconds,
        job.usage_gpu_seconds,
        (job.usage_primary, job.usage_fallback, job.usage_rules),
    )


def summed(usages: Iterable[Usage]) -> Usage:
    """The sum of several usages (a job or batch of several tasks: over its children)."""
    total = Usage()
    for usage in usages:
        total.inputs += usage.inputs
        total.cached_inputs += usage.cached_inputs
        total.tokens += usage.tokens
        total.model_seconds += usage.model_seconds
        total.gpu_model_seconds += usage.gpu_model_seconds
        total.tiers.primary += usage.tiers.primary
        total.tiers.fallback += usage.tiers.fallback
        total.tiers.rules += usage.tiers.rules
    return total


_USAGE_ATTRIBUTES = {f"usage_{n}" for n in _NAMES}
_TIERS = ("primary", "fallback", "rules")


def _usage(
    inputs: int, cached: int, tokens: int, seconds: float, gpu: float, tiers: Sequence[int]
) -> Usage:
    return Usage(
        inputs=inputs,
        cached_inputs=cached,
        tokens=tokens,
        model_seconds=seconds,
        gpu_model_seconds=gpu,
        tiers=TierCounts(**dict(zip(_TIERS, tiers, strict=True))),
    )


def _sums() -> list[Any]:
    return [func.coalesce(func.sum(Job.__table__.c[f"usage_{n}"]), 0) for n in _NAMES]


def batch_usage(session: Session, batch_id: uuid.UUID) -> Usage:
    """The sum over the batch's jobs: one aggregate over ``ix_jobs_batch_seq`` (a batch of a
    million lines has about 4,000 jobs of 256)."""
    row = session.execute(select(*_sums()).where(Job.batch_id == batch_id)).one()
    inputs, cached, tokens, seconds, gpu, *tiers = row
    return _usage(int(inputs), int(cached), int(tokens), float(seconds), float(gpu), tiers)


@dataclass(frozen=True)
class UsageRow:
    """One tenant's use of one task, and what it cost."""

    tenant: str
    task: str
    jobs: int
    usage: Usage
    cost: float  # in the unit of the INFERQ_COST_PER_* settings

    @property
    def cache_hit_rate(self) -> float | None:
        return self.usage.cached_inputs / self.usage.inputs if self.usage.inputs else None

    @property
    def cost_per_1000(self) -> float | None:
        """Per 1,000 predictions (inputs served, cached ones included)."""
        return 1000 * self.cost / self.usage.inputs if self.usage.inputs else None


def cost(usage: Usage, settings: Settings) -> float:
    """Model seconds priced at what a worker costs per hour: CPU seconds at
    INFERQ_COST_PER_WORKER_HOUR, GPU seconds at INFERQ_COST_PER_GPU_WORKER_HOUR. Idle worker
    time is not anyone's usage: see inferq_worker_busy_seconds_total for it."""
    cpu_seconds = max(0.0, usage.model_seconds - usage.gpu_model_seconds)
    return (
        cpu_seconds * settings.cost_per_worker_hour
        + usage.gpu_model_seconds * settings.cost_per_gpu_worker_hour
    ) / SECONDS_PER_HOUR


def with_tenant_totals(rows: Sequence[UsageRow]) -> list[UsageRow]:
    """``rows`` (sorted by tenant), each tenant's used by more than one task followed by a
    row for all its tasks ("*")."""
    out: list[UsageRow] = []
    by_tenant: dict[str, list[UsageRow]] = {}
    for row in rows:
        by_tenant.setdefault(row.tenant, []).append(row)
    for tenant, own in by_tenant.items():
        out += own
        if len(own) > 1:
            out.append(_total(tenant, own))
    return out


def _total(tenant: str, rows: Sequence[UsageRow]) -> UsageRow:
    def total(name: str) -> Any:
        return sum(getattr(row.usage, name) for row in rows)

    tiers = [sum(getattr(row.usage.tiers, tier) for row in rows) for tier in _TIERS]
    usage = _usage(
        total("inputs"),
        total("cached_inputs"),
        total("tokens"),
        total("model_seconds"),
        total("gpu_model_seconds"),
        tiers,
    )
    return UsageRow(tenant, "*", sum(r.jobs for r in rows), usage, sum(r.cost for r in rows))


def usage_report(
    session: Session,
    settings: Settings,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
) -> list[UsageRow]:
    """Per tenant and task, the jobs created since ``since``: one grouped query."""
    query = (
        select(Tenant.name, Job.task, func.count(Job.id), *_sums())
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.tasks.is_(None))  # a job of several tasks is counted in its children, per task
        .group_by(Tenant.name, Job.task)
        .order_by(Tenant.name, Job.task)
    )
    if tenant is not None:
        query = query.where(Tenant.name == tenant)
    if since is not None:
        query = query.where(Job.created_at >= since)
    rows: list[UsageRow] = []
    for name, task, jobs, inputs, cached, tokens, seconds, gpu, *tiers in session.execute(query):
        usage = _usage(int(inputs), int(cached), int(tokens), float(seconds), float(gpu), tiers)
        rows.append(UsageRow(name, task, int(jobs), usage, cost(usage, settings)))
    return rows
