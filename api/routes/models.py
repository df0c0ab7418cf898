"""/v1/models: every task, its fallback chain, each tier's version, circuit state and whether
some worker cannot load it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.deps import ModelsRead
from api.routes.jobs import PROBLEMS
from core.config import Settings
from core.inference.availability import TierReports, describe
from core.inference.circuit import Circuits
from core.inference.registry import all_tasks, tier_version
from schemas.models import ModelList, TaskOut, TierOut

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
            )
            for spec in tasks
        ]
    )


def _version(task: str, tier: str) -> str | None:
    try:
        return tier_version(task, tier)
    except (ImportError, OSError):  # its files live in a package this image does not install
        return None
