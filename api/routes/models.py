"""/v1/models: every task, its fallback chain, each tier's version, circuit state and whether
some worker cannot load it; /v1/models/{task}/drift: its live window against its reference;
/v1/models/{task}/rollout: its champion, canary and shadow, and how each version does."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.deps import ModelsRead
from api.routes.jobs import PROBLEMS
from core.config import Settings
from core.errors import NotFound
from core.inference.availability import TierReports, describe
from core.inference.circuit import Circuits
from core.inference.registry import all_tasks, task_names, tier_version
from core.rollout.report import RolloutReport, presented, report
from core.telemetry import drift
from schemas.models import (
    DriftOut,
    DriftReferenceOut,
    DriftSignalOut,
    DriftWindowOut,
    ModelList,
    RolloutOut,
    TaskOut,
    TierOut,
)

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList, responses=PROBLEMS)
async def list_models(request: Request, _caller: ModelsRead) -> ModelList:
    """Every task and its chain. Needs the ``models:read`` scope."""
    circuits: Circuits = request.app.state.circuits
    settings: Settings = request.app.state.settings
    reports = TierReports(settings.resolved_cache_url)
    return await run_in_threadpool(_describe, circuits, reports)


def _describe(circuits: Circuits, reports: TierReports) -> ModelList:
    tasks = all_tasks().values()
    down = reports.unavailable((spec.name, tier.tier) for spec in tasks for tier in spec.chain)
    return ModelList(
        data=[
            TaskOut(
                task=spec.name,
                description=spec.description,
                chain=[
                    TierOut(
                        tier=tier.tier,
                        adapter=tier.adapter,
                        version=_version(spec.name, tier.tier),
                        circuit=circuits.state(spec.name, tier.tier),
                        availability=describe(down.get((spec.name, tier.tier), [])),
                    )
                    for tier in spec.chain
                ],
                outputs=list(spec.outputs),
                labels=list(spec.labels),
            )
            for spec in tasks
        ]
    )


def _version(task: str, tier: str) -> str | None:
    try:
        return tier_version(task, tier)
    except (ImportError, OSError):  # its files live in a package this image does not install
        return None


@router.get("/{task}/drift", response_model=DriftOut, responses=PROBLEMS)
async def read_drift(request: Request, task: str, _caller: ModelsRead) -> DriftOut:
    """The task's last INFERQ_DRIFT_WINDOW primary-tier results against the reference profile
    made from held-out data at training time, one signal per method. Needs ``models:read``."""
    if task not in task_names():
        raise NotFound(f"no task {task!r}; the tasks are {', '.join(sorted(task_names()))}")
    settings: Settings = request.app.state.settings
    try:
        report = await run_in_threadpool(drift.check, settings, task)
    except drift.NoProfile as exc:
        raise NotFound(
            f"task {task!r} has no drift reference profile: its primary tier carries none, "
            f"or none was made (inferq models profile {task})"
        ) from exc
    return DriftOut(
        task=task,
        window=DriftWindowOut(**report.window),
        reference=DriftReferenceOut(**report.reference),
        signals=[
            DriftSignalOut(
                name=s.name,
                method=s.method,
                score=s.score,
                threshold=s.threshold,
                drifted=s.drifted,
            )
            for s in report.signals
        ],
        drifted=report.drifted,
        checked_at=report.checked_at,
    )


@router.get("/{task}/rollout", response_model=RolloutOut, responses=PROBLEMS)
async def read_rollout(request: Request, task: str, _caller: ModelsRead) -> RolloutOut:
    """The task's champion (what serves), its canary and share, its shadow, and what each version
    did in this revision (items, model time, confidence, the shadow's agreement with the
    champion), summed over every worker. Needs ``models:read``."""
    if task not in task_names():
        raise NotFound(f"no task {task!r}; the tasks are {', '.join(sorted(task_names()))}")
    database = request.app.state.database

    def read() -> RolloutReport:
        with database.read() as session:
            return report(session, task)

    return presented(await run_in_threadpool(read))
