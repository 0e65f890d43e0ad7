"""FastAPI dependencies: hand the lifespan's services to endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request

from server.auth import Project
from server.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


def image_cog_path(
    request: Request,
    image_id: Annotated[str, Path(description="Image id from the catalogue (GET /api/images).")],
    project: Project,
) -> str:
    """titiler's path dependency: an image id of the caller's project resolves to its COG;
    nothing else can be read."""
    return request.app.state.services.images.cog_path(image_id, project)
