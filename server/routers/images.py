"""The image catalogue: upload, list, describe, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from catalog.ingest import IngestTicket
from server.auth import Project
from server.dependencies import get_services
from server.schemas import ImageOut, IngestAccepted, JobOut, RemoteImageRequest
from server.services import Services
from server.uploads import MULTIPART_SLACK, receive_file

router = APIRouter(prefix="/api/images", tags=["images"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=202,
    response_model=IngestAccepted,
    openapi_extra=_UPLOAD_BODY,
    summary="Upload a GeoTIFF; it is validated now and converted to a COG in the background",
)
async def upload_image(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
    name: Annotated[str | None, Query(max_length=255, description="Display name")] = None,
) -> IngestAccepted:
    settings = services.settings
    limits = await run_in_threadpool(services.quotas.limits, project)
    max_bytes, limit_name = settings.max_upload_bytes, "TILEDETECT_MAX_UPLOAD_BYTES"
    if limits.upload_bytes is not None and limits.upload_bytes < max_bytes:
        max_bytes, limit_name = limits.upload_bytes, "the project's upload size limit"
    declared = request.headers.get("content-length", "")
    if declared.isdigit():  # refused before a byte is stored (the form's own bytes allowed for)
        await run_in_threadpool(
            services.quotas.check_upload_size, project, int(declared), MULTIPART_SLACK
        )
    upload = await receive_file(request, settings.upload_dir, "file", max_bytes, limit_name)

    def record() -> IngestTicket:
        try:
            with services.quotas.admit(project, "upload", upload.size):
                return services.ingestor.submit(
                    upload.path, name or upload.filename, remove_source=True, project=project
                )
        except Exception:
            upload.path.unlink(missing_ok=True)  # refused or not recorded: nothing is kept
            raise

    ticket = await run_in_threadpool(record)
    request.app.state.runner.submit(services.ingestor.run, ticket)
    # The records as stored: no second read that a database outage could turn into a 503 for
    # an upload already accepted.
    return IngestAccepted(
        image=ImageOut.of(ticket.image, str(request.base_url)), job=JobOut.of(ticket.job)
    )


@router.post(
    "/remote",
    status_code=201,
    response_model=ImageOut,
    summary="Register an existing COG by URL (hosts on TILEDETECT_REMOTE_COG_HOSTS only); "
    "read in place, never copied",
)
async def register_remote_image(
    body: RemoteImageRequest,
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
) -> ImageOut:
    image = await run_in_threadpool(services.remote_cogs.register, body.url, body.name, project)
    return ImageOut.of(image, str(request.base_url))


@router.get("", response_model=list[ImageOut], summary="List images (processing and ready)")
def list_images(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
    status: Annotated[str | None, Query(pattern="^(processing|ready)$")] = None,
) -> list[ImageOut]:
    base = str(request.base_url)
    return [ImageOut.of(image, base) for image in services.images.list(status, project)]


@router.get("/{image_id}", response_model=ImageOut, summary="Describe one image")
def get_image(
    image_id: str,
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
) -> ImageOut:
    return ImageOut.of(services.images.get(image_id, project), str(request.base_url))


@router.delete(
    "/{image_id}",
    status_code=204,
    summary="Delete an image and its COG (a remote COG's record only)",
)
def delete_image(
    image_id: str, services: Annotated[Services, Depends(get_services)], project: Project
) -> Response:
    services.images.delete(image_id, project)
    return Response(status_code=204)


jobs_router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@jobs_router.get("", response_model=list[JobOut], summary="Recent jobs, newest first")
def list_jobs(
    services: Annotated[Services, Depends(get_services)], project: Project
) -> list[JobOut]:
    return [JobOut.of(job) for job in services.jobs.list(project=project)]


@jobs_router.get("/{job_id}", response_model=JobOut, summary="A job's status and progress")
def get_job(
    job_id: str, services: Annotated[Services, Depends(get_services)], project: Project
) -> JobOut:
    return JobOut.of(services.jobs.get(job_id, project))
