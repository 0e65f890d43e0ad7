"""The caller's project: its limits and what it uses (catalog.quotas)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from server.auth import Project
from server.dependencies import get_services
from server.schemas import ProjectLimitsOut, ProjectOut, ProjectUsageOut
from server.services import Services

router = APIRouter(prefix="/api/project", tags=["projects"])


@router.get(
    "",
    response_model=ProjectOut,
    summary="The caller's project: its limits (null: none) and its usage (storage, jobs, "
    "objects exported)",
)
async def get_project(
    services: Annotated[Services, Depends(get_services)], project: Project
) -> ProjectOut:
    def read() -> ProjectOut:
        record = services.projects.resolve(project)
        return ProjectOut(
            id=record.id,
            name=record.name,
            limits=ProjectLimitsOut(**services.quotas.limits(project).as_dict()),
            usage=ProjectUsageOut(**services.quotas.usage(project).as_dict()),
        )

    return await run_in_threadpool(read)
