"""Bulk exports: start one over an image or AOI, follow it, cancel, resume, download."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Response
from starlette.concurrency import run_in_threadpool

from catalog.errors import ConflictError
from export.writers import FORMATS
from export.zones import ZONE_FORMATS
from server.auth import Project
from server.blob_responses import blob_response
from server.dependencies import get_services
from server.exports import elapsed_seconds
from server.schemas import ExportOut, ExportRequest
from server.services import Services

router = APIRouter(tags=["exports"])

ExportId = Annotated[str, Path(description="Export id (from POST .../exports).")]


def _out(record) -> ExportOut:
    return ExportOut.of(record, elapsed_seconds(record))


@router.post(
    "/api/detectors/{detector_id}/images/{image_id}/exports",
    status_code=202,
    response_model=ExportOut,
    summary="Detect objects over a whole image (or an AOI) in Dask grid cells, into a file",
)
async def start_export(
    detector_id: str,
    image_id: str,
    request: ExportRequest,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
) -> ExportOut:
    record = await run_in_threadpool(
        services.exports.start,
        detector_id,
        image_id,
        request.format,
        request.aoi,
        request.crs,
        request.version,
        project,
    )
    return _out(record)


@router.get("/api/exports", response_model=list[ExportOut], summary="List exports, newest first")
def list_exports(
    services: Annotated[Services, Depends(get_services)], project: Project
) -> list[ExportOut]:
    return [_out(r) for r in services.exports.store.list(project=project)]


@router.get("/api/exports/{export_id}", response_model=ExportOut, summary="Progress of an export")
def get_export(
    export_id: ExportId, services: Annotated[Services, Depends(get_services)], project: Project
):
    return _out(services.exports.store.get(export_id, project))


@router.post("/api/exports/{export_id}/cancel", response_model=ExportOut, summary="Cancel")
def cancel_export(
    export_id: ExportId, services: Annotated[Services, Depends(get_services)], project: Project
):
    return _out(services.exports.cancel(export_id, project))


@router.post(
    "/api/exports/{export_id}/resume",
    response_model=ExportOut,
    summary="Continue an unfinished, failed, partial or cancelled export (done cells are kept)",
)
def resume_export(
    export_id: ExportId, services: Annotated[Services, Depends(get_services)], project: Project
):
    return _out(services.exports.resume(export_id, project))


@router.get("/api/exports/{export_id}/download", summary="The finished export's file")
def download_export(
    export_id: ExportId, services: Annotated[Services, Depends(get_services)], project: Project
):
    record = services.exports.store.get(export_id, project)
    key = services.exports.result_key(record) if record.state in ("done", "partial") else None
    if key is None:
        raise ConflictError(f"export {export_id} is {record.state}; its file is not ready")
    fmt = FORMATS[record.format]
    return blob_response(
        services.exports.blobs, key, fmt.media_type, f"export-{export_id}{fmt.extension}"
    )


@router.post(
    "/api/exports/{export_id}/zones.{fmt}",
    response_class=Response,
    responses={200: {"content": {media: {} for media, _ in ZONE_FORMATS.values()}}},
    summary="Counts per zone: objects, density per hectare and covered area, per class",
    description=(
        "Post zones (fields, parcels, stands) as a GeoJSON FeatureCollection of WGS84 polygons; "
        "get back, from this finished export's objects, per zone and class: `count`, `per_ha` "
        "and `area_m2` covered. An object across a zone border counts once, where its "
        "representative point falls. `csv` and `parquet` (GeoParquet, the zone's polygon): one "
        "row per zone and class; `gpkg` and `geojson`: the zones with `<class>_count`, "
        "`<class>_per_ha`, `<class>_area_m2` columns. The zones' own properties are kept "
        "(prefixed `zone_` where a name clashes). Nothing is stored."
    ),
)
async def zone_counts(
    export_id: ExportId,
    fmt: Annotated[str, Path(description="csv, parquet, gpkg or geojson")],
    services: Annotated[Services, Depends(get_services)],
    project: Project,
    zones: Annotated[Any, Body(description="A GeoJSON FeatureCollection of zones (WGS84).")],
) -> Response:
    content = await run_in_threadpool(services.exports.zone_counts, export_id, zones, fmt, project)
    media, extension = ZONE_FORMATS[fmt]
    disposition = f'attachment; filename="zones-{export_id}{extension}"'
    return Response(content, media_type=media, headers={"Content-Disposition": disposition})
