"""One WMTS capabilities document for the whole server (imagery and detection layers), so GIS
users add a single URL."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from catalog.errors import NotFoundError
from catalog.models import ImageStatus
from inference.errors import IncompatibleImageError, InvalidDetectorError
from server.auth import Project, with_token
from server.dependencies import get_services
from server.routers.detections import detection_wmts_layers
from server.services import Services
from tiles.rendering import default_tile_params
from tiles.wmts import WmtsLayer, render_capabilities

router = APIRouter(tags=["wmts"])


@router.get(
    "/wmts/WMTSCapabilities.xml",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}}},
    summary="WMTS capabilities listing every ready image as a layer",
)
async def service_capabilities(
    request: Request, services: Annotated[Services, Depends(get_services)], project: Project
) -> Response:
    base = str(request.base_url)
    images = await run_in_threadpool(services.images.list, ImageStatus.READY, project)
    layers = [
        layer for image in images if image.meta for layer in _image_layers(image, base, request)
    ]
    layers += await run_in_threadpool(_detection_layers, services, images, base, project, request)
    url = with_token(f"{base}wmts/WMTSCapabilities.xml", request)
    xml = await run_in_threadpool(render_capabilities, layers, url)
    return Response(xml, media_type="application/xml")


def _detection_layers(
    services: Services, images: list, base: str, project: str, request: Request
) -> list[WmtsLayer]:
    """Every detector's latest version on every ready image it can run on (the project's)."""
    layers: list[WmtsLayer] = []
    for detector in services.detectors.list(project):
        for image in images:
            try:
                layers += detection_wmts_layers(
                    services, base, detector.id, image.id, project, request
                )
            except (NotFoundError, IncompatibleImageError, InvalidDetectorError):
                continue  # no version yet, or bands that do not fit: not a layer
    return layers


DEFAULT_GRID = "WebMercatorQuad"  # what web maps and most GIS projects use


def layer_identifier(image_id: str, tms_id: str) -> str:
    """`image-{id}` on the default grid, `image-{id}-{grid}` on the others."""
    suffix = "" if tms_id == DEFAULT_GRID else f"-{tms_id}"
    return f"image-{image_id}{suffix}"


def _image_layers(image, base: str, request: Request) -> list[WmtsLayer]:
    meta = image.meta
    params = "&".join(f"{k}={v}" for k, v in default_tile_params(meta))
    query = f"?{params}" if params else ""
    abstract = (
        f"{meta['width']}x{meta['height']} px, {meta['count']} band(s) {meta['dtype']}, "
        f"{meta['gsd']:.3g} m/px, {meta['crs']}"
    )
    return [
        WmtsLayer(
            identifier=layer_identifier(image.id, tms_id),
            title=image.name if tms_id == DEFAULT_GRID else f"{image.name} ({tms_id})",
            abstract=abstract,
            bounds=tuple(meta["bounds_wgs84"]),
            tms_id=tms_id,
            zooms=tuple(zooms),
            url_template=with_token(
                f"{base}api/images/{image.id}/tiles/{tms_id}/"
                f"{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png{query}",
                request,
            ),
        )
        for tms_id, zooms in meta["zooms"].items()
    ]
