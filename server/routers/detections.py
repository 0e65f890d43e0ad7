"""Detectors and their detection layers: overlay PNG, MVT and GeoJSON tiles, TileJSON, WMTS."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import morecantile
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from export.layer_source import objects_in_bounds
from inference.display import (
    OBJECT_MARGIN_PX,
    BelowMinZoom,
    TileRequest,
    minzoom,
    native_zoom,
    objects_of_tile,
    render_geojson,
    render_mvt,
    render_objects_overlay,
    render_overlay,
    tile_bounds_in_image_crs,
    tile_mosaic,
    tile_objects,
)
from inference.session import load_detector
from server.auth import Project, with_token
from server.dependencies import get_services
from server.routers.imagery import zoom_in_grid
from server.schemas import DetectorOut
from server.services import Services
from server.uploads import receive_file
from tiles.wmts import WmtsLayer, render_capabilities

router = APIRouter(prefix="/api/detectors", tags=["detectors"])

LAYER = "/{detector_id}/images/{image_id}"
MEDIA_TYPES = {
    "png": "image/png",
    "mvt": "application/vnd.mapbox-vector-tile",
    "pbf": "application/vnd.mapbox-vector-tile",
    "geojson": "application/geo+json",
}
TileFormat = Literal["png", "mvt", "pbf", "geojson"]
TmsId = Literal[tuple(morecantile.tms.list())]  # type: ignore[valid-type]
Version = Annotated[
    int | None, Query(ge=1, description="Detector version number; default the latest.")
]


@router.get("", response_model=list[DetectorOut], summary="List detectors")
def list_detectors(
    services: Annotated[Services, Depends(get_services)], project: Project
) -> list[DetectorOut]:
    return [_describe(services, d.id) for d in services.detectors.list(project)]


@router.post(
    "/import",
    status_code=201,
    response_model=DetectorOut,
    summary="Register an ONNX detector file (tiledetect or Deepness metadata)",
)
async def import_detector(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
    name: Annotated[str | None, Query(max_length=255)] = None,
) -> DetectorOut:
    settings = services.settings
    upload = await receive_file(request, settings.upload_dir, "file", settings.max_upload_bytes)
    try:
        detector = await run_in_threadpool(load_detector, upload.path)
        spec = detector.spec
        record = services.detectors.create(
            name or spec.name or upload.filename, list(spec.class_names), project=project
        )
        await run_in_threadpool(
            services.detectors.add_version, record.id, upload.path, spec, source="import"
        )
    finally:
        upload.path.unlink(missing_ok=True)
    return _describe(services, record.id)


@router.get("/{detector_id}", response_model=DetectorOut, summary="Describe a detector")
def get_detector(
    detector_id: str, services: Annotated[Services, Depends(get_services)], project: Project
) -> DetectorOut:
    return _describe(services, detector_id, project)


@router.delete("/{detector_id}", status_code=204, summary="Delete a detector and its versions")
def delete_detector(
    detector_id: str, services: Annotated[Services, Depends(get_services)], project: Project
) -> Response:
    removed = services.detectors.delete(detector_id, project)
    services.layers.forget(removed)
    for version_id in removed:
        services.engine.cache.forget_version(version_id)
    return Response(status_code=204)


def _describe(services: Services, detector_id: str, project: str | None = None) -> DetectorOut:
    record = services.detectors.get(detector_id, project)
    versions = services.detectors.versions(detector_id)
    provider = services.layers.detector(versions[-1]).provider if versions else None
    return DetectorOut.of(record, versions, provider)


@router.get(
    LAYER + "/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
    responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}},
    response_class=Response,
    dependencies=[Depends(zoom_in_grid)],
    summary="A detection tile: RGBA overlay (png), vector tile (mvt) or GeoJSON objects",
)
async def detection_tile(
    request: Request,
    detector_id: str,
    image_id: str,
    tileMatrixSetId: TmsId,  # noqa: N803 - titiler's name for it
    z: Annotated[int, Path(ge=0)],
    x: Annotated[int, Path(ge=0)],
    y: Annotated[int, Path(ge=0)],
    format: TileFormat,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
    version: Version = None,
    tilesize: Annotated[int, Query(ge=64, le=1024)] = 256,
    threshold: Annotated[
        float | None,
        Query(gt=0, lt=1, description="Score threshold; default the detector's own."),
    ] = None,
) -> Response:
    layer = await run_in_threadpool(services.layers.layer, detector_id, image_id, version, project)
    if threshold is not None:
        layer = layer.with_threshold(threshold)
    tms = morecantile.tms.get(tileMatrixSetId)
    tile = morecantile.Tile(x, y, z)
    if not tms.is_valid(tile):
        raise morecantile.errors.TileArgParsingError(f"tile {z}/{x}/{y} is not in {tms.id}")
    key = (layer.version_id, image_id, tms.id, z, x, y, format, tilesize, threshold)
    rendered = services.rendered_tiles.get(key)
    if rendered is None:
        body, headers = await _render_tile(
            services, layer, TileRequest(tms, tile, tilesize), format
        )
        services.rendered_tiles.put(key, body, headers)
    else:
        body, headers = rendered
    return Response(body, media_type=MEDIA_TYPES[format], headers=headers)


async def _render_tile(
    services: Services, layer, tile_request: TileRequest, format: str
) -> tuple[bytes, dict[str, str]]:
    headers = {"X-Tiledetect-Version": layer.version_id}
    try:
        mosaic, bounds = await tile_mosaic(services.engine, layer, tile_request, OBJECT_MARGIN_PX)
    except BelowMinZoom as below:
        headers["X-Tiledetect-Minzoom"] = str(below.minzoom)
        source = await run_in_threadpool(
            services.exports.layer_source, layer.version_id, layer.image_id
        )
        if source is not None:
            headers["X-Tiledetect-Source"] = f"export {source.parent.name}"
            return await run_in_threadpool(
                _export_tile, layer, source, tile_request, format
            ), headers
        headers["X-Tiledetect-Empty"] = str(below)
        mosaic, bounds = None, None
    if format == "png" and not layer.spec.objects_outgrow_pixels:
        return await run_in_threadpool(render_overlay, layer, mosaic, tile_request), headers
    if format == "png":  # trained on cores: the probabilities show cores, the objects show all
        objects = (
            await run_in_threadpool(tile_objects, layer, mosaic, bounds, whole_only=False)
            if mosaic is not None
            else []
        )
        return await run_in_threadpool(
            render_objects_overlay, layer, objects, tile_request
        ), headers
    whole = format == "geojson"
    objects = (
        await run_in_threadpool(tile_objects, layer, mosaic, bounds, whole_only=whole)
        if mosaic is not None
        else []
    )
    if whole:
        collection = await run_in_threadpool(render_geojson, layer, objects)
        return json.dumps(collection).encode(), headers
    return await run_in_threadpool(render_mvt, layer, objects, tile_request), headers


def _export_tile(layer, source, tile_request: TileRequest, format: str) -> bytes:
    """A low-zoom tile drawn from a finished export's objects instead of inference."""
    bounds = tile_bounds_in_image_crs(layer, tile_request)
    threshold = layer.spec.score_threshold
    objects = [o for o in objects_in_bounds(source, bounds, layer.spec) if o.score >= threshold]
    if format == "png":
        return render_objects_overlay(layer, objects, tile_request)
    if format == "geojson":
        whole = objects_of_tile(objects, bounds, whole_only=True)
        return json.dumps(render_geojson(layer, whole)).encode()
    return render_mvt(layer, objects_of_tile(objects, bounds, whole_only=False), tile_request)


@router.get(LAYER + "/{tileMatrixSetId}/tilejson.json", summary="TileJSON of a detection layer")
def detection_tilejson(
    request: Request,
    detector_id: str,
    image_id: str,
    tileMatrixSetId: TmsId,  # noqa: N803
    services: Annotated[Services, Depends(get_services)],
    project: Project,
    version: Version = None,
    format: Annotated[Literal["png", "mvt"], Query()] = "png",
) -> dict:
    layer = services.layers.layer(detector_id, image_id, version, project)
    image = services.images.get(image_id)
    tms = morecantile.tms.get(tileMatrixSetId)
    west, south, east, north = image.meta["bounds_wgs84"]
    latitude = (south + north) / 2
    low, high = minzoom(layer, tms, latitude), native_zoom(layer, tms, latitude)
    if services.exports.layer_source(layer.version_id, image_id) is not None:
        low = 0  # a finished export draws the zoomed-out tiles
    query = f"?version={version}" if version else ""
    root = f"{request.base_url}api/detectors/{detector_id}/images/{image_id}"
    tiles = with_token(f"{root}/tiles/{tms.id}/{{z}}/{{x}}/{{y}}.{format}{query}", request)
    tilejson = {
        "tilejson": "3.0.0",
        "name": f"{services.detectors.get(detector_id).name} on {image.name}",
        "tiles": [tiles],
        "minzoom": min(low, high),
        "maxzoom": high,
        "bounds": [west, south, east, north],
        "center": [(west + east) / 2, latitude, high],
        "scheme": "xyz",
    }
    if format == "mvt":
        tilejson["vector_layers"] = [
            {
                "id": "objects",
                "fields": {"class": "String", "score": "Number", "area_m2": "Number"},
                "minzoom": min(low, high),
                "maxzoom": high,
            }
        ]
    return tilejson


@router.get(
    LAYER + "/WMTSCapabilities.xml",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}}},
    summary="WMTS capabilities of one detection layer",
)
def detection_wmts(
    request: Request,
    detector_id: str,
    image_id: str,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
) -> Response:
    layers = detection_wmts_layers(
        services, str(request.base_url), detector_id, image_id, project, request
    )
    url = f"{request.base_url}api/detectors/{detector_id}/images/{image_id}/WMTSCapabilities.xml"
    xml = render_capabilities(layers, with_token(url, request))
    return Response(xml, media_type="application/xml")


def detection_wmts_layers(
    services: Services,
    base: str,
    detector_id: str,
    image_id: str,
    project: str,
    request: Request,
) -> list[WmtsLayer]:
    """The detection layer of (detector, image) on WebMercatorQuad, for WMTS documents; its URL
    carries the request's token, if any."""
    layer = services.layers.layer(detector_id, image_id, project=project)
    image = services.images.get(image_id)
    detector = services.detectors.get(detector_id)
    tms = morecantile.tms.get("WebMercatorQuad")
    west, south, east, north = image.meta["bounds_wgs84"]
    latitude = (south + north) / 2
    high = native_zoom(layer, tms, latitude)
    low = min(minzoom(layer, tms, latitude), high)
    template = (
        f"{base}api/detectors/{detector_id}/images/{image_id}/tiles/WebMercatorQuad/"
        "{TileMatrix}/{TileCol}/{TileRow}.png"
    )
    return [
        WmtsLayer(
            identifier=f"detections-{detector_id}-{image_id}",
            title=f"{detector.name} on {image.name}",
            abstract=f"objects: {', '.join(layer.spec.class_names)}",
            bounds=(west, south, east, north),
            tms_id="WebMercatorQuad",
            zooms=(low, high),
            url_template=with_token(template, request),
        )
    ]
