"""/v1/models: every task, its fallback chain, each tier's version and circuit state."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.deps import TenantDep
from core.inference.circuit import Circuits
from core.inference.registry import all_tasks, tier_version
from schemas.models import ModelList, TaskOut, TierOut

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(request: Request, _tenant: TenantDep) -> ModelList:
    circuits: Circuits = request.app.state.circuits
    return await run_in_threadpool(_describe, circuits)


def _describe(circuits: Circuits) -> ModelList:
    return ModelList(
        data=[
            TaskOut(
                task=spec.name,
                description=spec.description,
                chain=[
                    TierOut(
                        tier=tier.tier,
                        adapter=tier.adapter,
                        version=tier_version(spec.name, tier.tier),
                        circuit=circuits.state(spec.name, tier.tier),
                    )
                    for tier in spec.chain
                ],
            )
            for spec in all_tasks().values()
        ]
    )
