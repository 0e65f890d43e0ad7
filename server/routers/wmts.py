"""One WMTS capabilities document for the whole server, so GIS users add a single URL."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from catalog.models import ImageStatus
from server.dependencies import get_services
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
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Response:
    base = str(request.base_url)
    images = await run_in_threadpool(services.images.list, ImageStatus.READY)
    layers = [_image_layer(image, base) for image in images if image.meta]
    url = f"{base}wmts/WMTSCapabilities.xml"
    xml = await run_in_threadpool(render_capabilities, layers, url)
    return Response(xml, media_type="application/xml")


def _image_layer(image, base: str) -> WmtsLayer:
    meta = image.meta
    params = "&".join(f"{k}={v}" for k, v in default_tile_params(meta))
    template = (
        f"{base}api/images/{image.id}/tiles/{{TileMatrixSet}}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"
        + (f"?{params}" if params else "")
    )
    return WmtsLayer(
        identifier=f"image-{image.id}",
        title=image.name,
        abstract=(
            f"{meta['width']}x{meta['height']} px, {meta['count']} band(s) {meta['dtype']}, "
            f"{meta['gsd']:.3g} m/px, {meta['crs']}"
        ),
        bounds=tuple(meta["bounds_wgs84"]),
        zooms={tms_id: tuple(z) for tms_id, z in meta["zooms"].items()},
        url_template=template,
    )
