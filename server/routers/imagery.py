"""Imagery tiles: titiler's TilerFactory over rio-tiler, with the image id as the only input."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path as FilePath
from typing import Annotated

import morecantile
from fastapi import Depends, Path, Request
from morecantile.errors import InvalidZoomError
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds
from starlette.concurrency import run_in_threadpool
from titiler.core.factory import TilerFactory
from titiler.extensions.wmts import wmtsExtension

from server.dependencies import image_cog_path
from tiles.reader import ImageReader
from tiles.requests import (
    check_algorithm_params,
    check_band_indexes,
    check_box,
    check_coordinates,
    check_extent_px,
    check_has_area,
    check_histogram_bins,
    check_histogram_range,
    check_margin,
    check_nodata,
    check_output_side,
    check_read_extent,
    check_tile_in_grid,
    check_zoom_limits,
    feature_bounds,
)

IMAGE_PREFIX = "/api/images/{image_id}"
# Any concrete path matching the tile routes selects them for the zoom check.
_TILE_ROUTES = [
    {"path": "/tiles/WebMercatorQuad/0/0/0", "method": "GET"},
    {"path": "/tiles/WebMercatorQuad/0/0/0.png", "method": "GET"},
]


def _layer_identifier(cog_path: str) -> str:
    """Per-image WMTS layers are named by image id, never by the file path behind it."""
    return FilePath(cog_path).stem


@lru_cache(maxsize=64)
def _grid(tms_id: str) -> morecantile.TileMatrixSet | None:
    # morecantile's registry deep-copies a grid on every get(): look each one up once.
    if tms_id not in morecantile.tms.list():
        return None
    return morecantile.tms.get(tms_id)


async def zoom_in_grid(
    tileMatrixSetId: Annotated[str, Path()],  # noqa: N803 - titiler's path parameter name
    z: Annotated[int, Path()],
    x: Annotated[int, Path()],
    y: Annotated[int, Path()],
) -> None:
    """A zoom level or column/row the grid does not have gets a message naming those it has."""
    grid = _grid(tileMatrixSetId)
    if grid is None:
        return  # titiler's own validation names the grids it knows
    if not grid.minzoom <= z <= grid.maxzoom:
        raise InvalidZoomError(
            f"zoom {z} is out of range: {tileMatrixSetId} has zoom levels {grid.minzoom} to "
            f"{grid.maxzoom}"
        )
    check_tile_in_grid(grid, z, x, y)


# Query parameters that size the output (px per side) or the read around it.
_SIDES = ("tilesize", "width", "height", "max_size")
_MARGINS = ("buffer", "padding")


async def bounded_request(request: Request) -> None:
    """Every imagery route: refuse sizes, band indexes, values and extents that cannot be served,
    before titiler reads anything. Values that do not parse are left to titiler's validation."""
    query, path = request.query_params, request.path_params
    sides = {**{k: path[k] for k in ("width", "height") if k in path}}
    sides |= {k: query[k] for k in _SIDES if k in query}
    for name, raw in sides.items():
        value = _number(raw)
        if value is not None:
            check_output_side(name, value)
    tilesize = _number(query.get("tilesize", "256")) or 256
    for name in _MARGINS:
        value = _number(query.get(name))
        if value is not None:
            check_margin(name, value, tilesize)
    if "histogram_bins" in query:
        check_histogram_bins(query["histogram_bins"])
    if "histogram_range" in query:
        check_histogram_range(query["histogram_range"])
    if "algorithm_params" in query:
        check_algorithm_params(query["algorithm_params"])
    grid = _grid(path.get("tileMatrixSetId", ""))
    limits = {k: _number(query[k]) for k in ("minzoom", "maxzoom") if k in query}
    if grid is not None and limits and None not in limits.values():
        check_zoom_limits(grid, limits)  # type: ignore[arg-type]
    names = ("lon", "lat") if "lon" in path else ("minx", "miny", "maxx", "maxy")
    coordinates = [_number(path[k]) for k in names if k in path]
    box = None
    if coordinates and None not in coordinates:
        check_coordinates(coordinates, geographic="coord_crs" not in query)
        if len(coordinates) == 4:
            check_box(*coordinates)
            box = tuple(coordinates)
    if "image_id" not in path:
        return
    indexes = [int(v) for v in query.getlist("bidx") if v.lstrip("-").isdigit()]
    posted = request.method == "POST"
    padded = (_number(query.get("padding")) or 0) > 0 and "z" in path
    unsized = box is not None and not any(k in sides for k in ("width", "height", "max_size"))
    nodata = query.get("nodata")
    if not (indexes or posted or padded or unsized or nodata is not None):
        return
    image = await run_in_threadpool(request.app.state.services.images.get, path["image_id"])
    meta = image.meta or {}
    if indexes:
        check_band_indexes(indexes, meta.get("count", 0))
    if nodata is not None and meta.get("dtype"):
        check_nodata(nodata, meta["dtype"])
    if posted:
        await _check_posted_feature(request, meta, query)
    if unsized:
        extent = _native_px(box, query.get("coord_crs") or "EPSG:4326", meta)
        if extent is not None:
            check_extent_px(*extent, what=f"the box {','.join(path[k] for k in names)}")
    if padded and grid is not None:
        _check_padded_tile(grid, path, meta)


def _check_padded_tile(grid: morecantile.TileMatrixSet, path, meta: dict) -> None:
    """rio-tiler reads a padded tile at the image's own resolution (then resamples): at zooms
    well above the image's that is millions of pixels per tile (minutes, gigabytes)."""
    z, x, y = (_number(path.get(k)) for k in ("z", "x", "y"))
    if None in (z, x, y) or not grid.minzoom <= z <= grid.maxzoom:
        return  # zoom_in_grid names the zoom levels the grid has
    try:
        bounds = grid.xy_bounds(int(x), int(y), int(z))
    except (ValueError, OverflowError, morecantile.errors.MorecantileError):
        return  # zoom_in_grid names the address
    extent = _native_px(tuple(bounds), grid.crs.to_wkt(), meta)
    check_read_extent(
        *(extent or (math.inf, math.inf)),
        what=f"padding reads tile {int(z)}/{int(x)}/{int(y)} at the image's resolution: it",
        fix="use padding at zooms nearer the image's native zoom, or leave it out",
    )


def _native_px(bounds, crs, meta: dict) -> tuple[float, float] | None:
    """The size of `bounds` (in `crs`) in pixels of the image, or None when unknown."""
    if not meta.get("crs_wkt") or not meta.get("resolution"):
        return None
    try:
        west, south, east, north = transform_bounds(crs, meta["crs_wkt"], *bounds)
    except (CRSError, ValueError):
        return None  # titiler names an unknown coord_crs
    res_x, res_y = meta["resolution"]
    return (east - west) / res_x, (north - south) / res_y


async def _check_posted_feature(request: Request, meta: dict, query) -> None:
    """A posted feature's positions, its area, and the size it reads at the image's resolution
    unless the request bounds the output."""
    try:
        geojson = await request.json()
    except ValueError:
        return  # titiler answers malformed JSON itself
    coord_crs = query.get("coord_crs")
    bounds = feature_bounds(geojson, geographic=coord_crs is None)
    check_has_area(bounds)
    if any(k in query for k in ("max_size", "width", "height")) or "width" in request.path_params:
        return
    extent = _native_px(bounds, coord_crs or "EPSG:4326", meta)
    if extent is not None:
        check_extent_px(*extent)


def _number(raw: str | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def imagery_factory() -> TilerFactory:
    return TilerFactory(
        reader=ImageReader,
        path_dependency=image_cog_path,
        router_prefix=IMAGE_PREFIX,
        add_viewer=False,  # titiler's viewer loads its scripts from a CDN; static/ has ours
        extensions=[wmtsExtension(layer_identifier_provider=_layer_identifier)],
        route_dependencies=[(_TILE_ROUTES, [Depends(zoom_in_grid)])],
    )
