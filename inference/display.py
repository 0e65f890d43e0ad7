"""Display tiles of a detection layer: an RGBA overlay, MVT or GeoJSON for one tile of a grid.

Every output comes from the same native-resolution mosaic of cached inference windows, so all
zooms and tile grids show the same objects. The mosaic covers the tile plus a margin, so objects
crossing the tile's edge come out whole; an object belongs to the tile holding its representative
point, so each appears in exactly one tile's GeoJSON.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import morecantile
import numpy as np
import shapely
from pyproj import Transformer
from rasterio.warp import Resampling, reproject, transform_bounds
from rio_tiler.utils import render
from shapely.geometry import box

from inference.engine import DetectionEngine, Layer, Mosaic
from inference.objects import DetectedObject, extract_objects
from inference.vector_tiles import objects_to_geojson, objects_to_mvt

# A display tile needing more windows than this is below the layer's minimum zoom.
MAX_WINDOWS_PER_TILE = 16
# Objects up to this size (in native pixels) crossing a tile edge still come out whole.
OBJECT_MARGIN_PX = 64


@dataclass(frozen=True)
class TileRequest:
    tms: morecantile.TileMatrixSet
    tile: morecantile.Tile
    size: int = 256


class BelowMinZoom(Exception):
    """The tile would need too many inference windows; the response says so instead."""

    def __init__(self, minzoom: int) -> None:
        super().__init__(f"detection runs from zoom {minzoom}; zoom in to see objects")
        self.minzoom = minzoom


def tile_bounds_in_image_crs(layer: Layer, request: TileRequest) -> tuple[float, ...]:
    bounds = request.tms.xy_bounds(request.tile)
    return transform_bounds(request.tms.rasterio_crs, layer.crs, *bounds, densify_pts=21)


def expand(bounds: tuple[float, ...], margin: float) -> tuple[float, float, float, float]:
    left, bottom, right, top = bounds
    return (left - margin, bottom - margin, right + margin, top + margin)


def minzoom(layer: Layer, tms: morecantile.TileMatrixSet, latitude: float) -> int:
    """The lowest zoom whose tiles need at most MAX_WINDOWS_PER_TILE windows."""
    return _minzoom(layer.grid.core * layer.spec.resolution_m, tms.id, latitude)


@functools.lru_cache(maxsize=4096)
def _minzoom(ground_per_window: float, tms_id: str, latitude: float) -> int:
    tms = morecantile.tms.get(tms_id)
    metres_per_unit = _metres_per_tms_unit(tms, latitude)
    for zoom in range(tms.minzoom, tms.maxzoom + 1):
        matrix = tms.matrix(zoom)
        tile_ground = matrix.tileWidth * matrix.cellSize * metres_per_unit
        if (math.ceil(tile_ground / ground_per_window) + 1) ** 2 <= MAX_WINDOWS_PER_TILE:
            return zoom
    return tms.maxzoom


def native_zoom(layer: Layer, tms: morecantile.TileMatrixSet, latitude: float) -> int:
    """The zoom whose pixels are closest to the detector's resolution (TileJSON maxzoom)."""
    units = layer.spec.resolution_m / _metres_per_tms_unit(tms, latitude)
    return tms.zoom_for_res(units)


def _metres_per_tms_unit(tms: morecantile.TileMatrixSet, latitude: float) -> float:
    crs = tms.rasterio_crs
    if crs.is_geographic:
        return 111_320.0 * math.cos(math.radians(latitude))
    if crs.to_dict().get("proj") == "merc":
        return math.cos(math.radians(latitude))
    return crs.linear_units_factor[1] if crs.linear_units_factor else 1.0


async def tile_mosaic(
    engine: DetectionEngine, layer: Layer, request: TileRequest, margin_px: int
) -> tuple[Mosaic | None, tuple[float, ...]]:
    bounds = tile_bounds_in_image_crs(layer, request)
    reach = expand(bounds, margin_px * layer.grid.pixel_size)
    # By zoom, not by this tile's window count, so a zoomed-out view is uniform up to the image
    # edge (edge tiles would need fewer windows); the count still guards odd grids.
    west, south, east, north = request.tms.bounds(request.tile)
    lowest = minzoom(layer, request.tms, round((south + north) / 2, 1))
    if request.tile.z < lowest or len(layer.grid.windows_for(reach)) > MAX_WINDOWS_PER_TILE:
        raise BelowMinZoom(lowest)
    return await engine.mosaic(layer, reach), bounds


def render_overlay(layer: Layer, mosaic: Mosaic | None, request: TileRequest) -> bytes:
    """PNG: each pixel the colour of its most likely class, alpha rising with the score."""
    size = request.size
    rgba = np.zeros((4, size, size), np.uint8)
    if mosaic is not None:
        spec = layer.spec
        probabilities = _warp_to_tile(mosaic, request, spec.class_channels)
        best = probabilities.argmax(axis=0)
        score = probabilities.max(axis=0)
        shown = (best > 0) & (score >= spec.score_threshold)
        strength = np.clip((score - spec.score_threshold) / (1 - spec.score_threshold), 0, 1)
        for class_index in range(len(spec.class_names)):
            here = shown & (best == class_index + 1)
            rgb = _hex_to_rgb(spec.color(class_index))
            for band in range(3):
                rgba[band][here] = rgb[band]
        rgba[3] = np.where(shown, 110 + 120 * strength, 0).astype(np.uint8)
    return render(rgba[:3], mask=rgba[3], img_format="PNG")


def render_objects_overlay(
    layer: Layer, objects: list[DetectedObject], request: TileRequest
) -> bytes:
    """PNG of finished objects (an export's), in class colours: for zooms without inference."""
    from rasterio.features import rasterize
    from rasterio.transform import from_bounds

    size = request.size
    rgba = np.zeros((4, size, size), np.uint8)
    if objects:
        to_tile = Transformer.from_crs(
            layer.crs, request.tms.rasterio_crs, always_xy=True
        ).transform
        shapes = [
            (shapely.transform(o.geometry, to_tile, interleaved=False), o.class_index + 1)
            for o in objects
        ]
        transform = from_bounds(*request.tms.xy_bounds(request.tile), size, size)
        classes = rasterize(shapes, out_shape=(size, size), transform=transform, dtype="uint8")
        for class_index in range(len(layer.spec.class_names)):
            here = classes == class_index + 1
            for band, value in enumerate(_hex_to_rgb(layer.spec.color(class_index))):
                rgba[band][here] = value
        rgba[3] = np.where(classes > 0, 200, 0).astype(np.uint8)
    return render(rgba[:3], mask=rgba[3], img_format="PNG")


def objects_of_tile(
    objects: list[DetectedObject], tile_bounds: tuple[float, ...], *, whole_only: bool
) -> list[DetectedObject]:
    """The tile's share of finished objects, by the same rule `tile_objects` applies."""
    left, bottom, right, top = tile_bounds
    area = box(*tile_bounds)
    kept = []
    for obj in objects:
        if whole_only:
            point = obj.geometry.representative_point()
            if left <= point.x < right and bottom < point.y <= top:
                kept.append(obj)
        elif obj.geometry.intersects(area):
            kept.append(obj)
    return kept


def _warp_to_tile(mosaic: Mosaic, request: TileRequest, class_channels: int) -> np.ndarray:
    bounds = request.tms.xy_bounds(request.tile)
    size = request.size
    from rasterio.transform import from_bounds

    classes = mosaic.probabilities[:class_channels]  # box distances are not shown
    destination = np.zeros((classes.shape[0], size, size), np.float32)
    reproject(
        classes,
        destination,
        src_transform=mosaic.transform,
        src_crs=mosaic.crs,
        dst_transform=from_bounds(*bounds, size, size),
        dst_crs=request.tms.rasterio_crs,
        resampling=Resampling.bilinear,
        src_nodata=None,
    )
    return destination


def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def tile_objects(
    layer: Layer, mosaic: Mosaic | None, tile_bounds: tuple[float, ...], *, whole_only: bool
) -> list[DetectedObject]:
    """Objects of the tile: those whose representative point is in it (`whole_only`), or all
    that touch it."""
    if mosaic is None:
        return []
    area = box(*tile_bounds)
    if whole_only:
        # Half-open on the right and bottom edges, so a point on a border has one owner.
        left, bottom, right, top = tile_bounds

        def keep(polygon) -> bool:
            point = polygon.representative_point()
            return left <= point.x < right and bottom < point.y <= top
    else:

        def keep(polygon) -> bool:
            return polygon.intersects(area)

    metres_per_unit = layer.spec.resolution_m / layer.grid.pixel_size
    return extract_objects(
        mosaic.probabilities,
        mosaic.transform,
        layer.spec,
        keep=keep,
        metres_per_unit=metres_per_unit,
    )


def render_geojson(layer: Layer, objects: list[DetectedObject]) -> dict:
    to_wgs84 = Transformer.from_crs(layer.crs, "EPSG:4326", always_xy=True).transform
    return objects_to_geojson(objects, to_wgs84)


def render_mvt(layer: Layer, objects: list[DetectedObject], request: TileRequest) -> bytes:
    to_tile = Transformer.from_crs(layer.crs, request.tms.rasterio_crs, always_xy=True).transform
    in_tile_crs = [
        DetectedObject(
            o.class_name,
            o.class_index,
            o.score,
            shapely.transform(o.geometry, to_tile, interleaved=False),
            o.area_m2,
        )
        for o in objects
    ]
    return objects_to_mvt(in_tile_crs, request.tms.xy_bounds(request.tile), layer_name="objects")
