"""Checks on what a tile or image-data request asks for, before any pixel is read.

titiler validates types; these bound the work: an output of 100000x100000 px, a buffer of 1e9 px
or a band 0 would otherwise fail deep inside numpy or GDAL (or exhaust memory) as a 500.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import morecantile
import numpy as np

from tiles.errors import InvalidTileRequestError, OutsideGridError

# Largest output side in pixels: 16x a 256 px tile, 4x a 1024 px preview.
MAX_OUTPUT_SIDE = 4096


def check_output_side(name: str, value: float) -> None:
    if not math.isfinite(value) or value > MAX_OUTPUT_SIDE:
        raise InvalidTileRequestError(
            f"{name}={value:g} is too large: outputs are at most {MAX_OUTPUT_SIDE} px per side"
        )
    if value < 1:
        raise InvalidTileRequestError(
            f"{name}={value:g} is too small: outputs are at least 1 px per side"
        )


def check_nodata(raw: str, dtype: str) -> None:
    """A nodata value the image's pixels can hold: NaN, infinities or out-of-range numbers
    cannot mark an integer pixel (rio-tiler would fail converting its fill value)."""
    try:
        value = float(raw)
    except ValueError:
        return  # titiler names a value that is not a number
    kind = np.dtype(dtype)
    if kind.kind not in "iu":
        return
    info = np.iinfo(kind)
    if not (math.isfinite(value) and info.min <= value <= info.max):
        raise InvalidTileRequestError(
            f"nodata={raw} cannot be a pixel value of this {dtype} image: use a number from "
            f"{info.min} to {info.max}"
        )


def check_histogram_bins(raw: str) -> None:
    """A positive bin count, or at least two increasing bin edges (numpy.histogram's rules)."""
    parts = raw.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return  # titiler names a value that is not a number
    if len(values) == 1:
        if not (math.isfinite(values[0]) and values[0] >= 1 and values[0] == int(values[0])):
            raise InvalidTileRequestError(
                f"histogram_bins={raw} must be a whole number of bins, at least 1, or "
                "comma-separated increasing bin edges"
            )
        return
    increasing = all(b > a for a, b in zip(values, values[1:], strict=False))
    if not (all(math.isfinite(v) for v in values) and increasing):
        raise InvalidTileRequestError(
            f"histogram_bins={raw}: bin edges must be finite and increasing"
        )


def check_histogram_range(raw: str) -> None:
    """`min,max`: two finite numbers, min below max (numpy.histogram's range)."""
    try:
        values = [float(p) for p in raw.split(",")]
    except ValueError:
        return  # titiler names a value that is not a number
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or values[0] >= values[1]:
        raise InvalidTileRequestError(
            f"histogram_range={raw[:60]!r} must be 'min,max' with finite min < max"
        )


def check_zoom_limits(tms: morecantile.TileMatrixSet, limits: dict[str, float]) -> None:
    """minzoom / maxzoom asked of a tileset: zoom levels the grid has, in order."""
    for name, value in limits.items():
        if not tms.minzoom <= value <= tms.maxzoom:
            raise InvalidTileRequestError(
                f"{name}={value:g} is out of range: {tms.id} has zoom levels {tms.minzoom} to "
                f"{tms.maxzoom}"
            )
    if "minzoom" in limits and "maxzoom" in limits and limits["minzoom"] > limits["maxzoom"]:
        raise InvalidTileRequestError(
            f"minzoom={limits['minzoom']:g} is above maxzoom={limits['maxzoom']:g}"
        )


def check_algorithm_params(raw: str) -> None:
    """titiler passes algorithm_params as keyword arguments: it must be a JSON object."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidTileRequestError(
            f'algorithm_params must be a JSON object, e.g. {{"bands": 3}}, not {raw[:40]!r}'
        )


def check_read_extent(width_px: float, height_px: float, what: str, fix: str) -> None:
    """What a read covers at the image's own resolution, where rio-tiler reads it whole."""
    if not (math.isfinite(width_px) and math.isfinite(height_px)) or (
        max(width_px, height_px) > MAX_OUTPUT_SIDE
    ):
        size = (
            f"{width_px:.0f}x{height_px:.0f} px"
            if math.isfinite(width_px) and math.isfinite(height_px)
            else "an unbounded size"
        )
        raise InvalidTileRequestError(
            f"{what} covers {size} at the image's resolution; reads at that resolution are at "
            f"most {MAX_OUTPUT_SIDE} px per side: {fix}"
        )


def check_box(minx: float, miny: float, maxx: float, maxy: float) -> None:
    """A bounding box with an inside: a line or a point has no pixels to draw."""
    if not (minx < maxx and miny < maxy):
        raise InvalidTileRequestError(
            f"the box {minx:g},{miny:g},{maxx:g},{maxy:g} is empty: it must be "
            "minx,miny,maxx,maxy with minx < maxx and miny < maxy"
        )


def check_margin(name: str, value: float, tilesize: float) -> None:
    """A buffer or padding around a tile: the read is tilesize + 2 * value px per side."""
    if not math.isfinite(value) or value < 0 or tilesize + 2 * value > MAX_OUTPUT_SIDE:
        raise InvalidTileRequestError(
            f"{name}={value:g} is out of range: with tilesize {tilesize:g} it must be from 0 to "
            f"{max(0, (MAX_OUTPUT_SIDE - tilesize) // 2):g} px"
        )


def check_band_indexes(indexes: Iterable[int], count: int) -> None:
    for index in indexes:
        if not 1 <= index <= count:
            raise InvalidTileRequestError(
                f"band {index} does not exist: the image has bands 1 to {count}"
            )


def check_coordinates(values: Iterable[float], geographic: bool) -> None:
    """Coordinates (x, y pairs) must be finite; longitude/latitude also within WGS84's range."""
    values = list(values)
    for x, y in zip(values[0::2], values[1::2], strict=False):
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InvalidTileRequestError(f"coordinates must be finite numbers, not [{x}, {y}]")
        if geographic and (abs(x) > 180 or abs(y) > 90):
            raise InvalidTileRequestError(
                f"coordinates [{x:g}, {y:g}] are outside WGS84 (longitude -180..180, "
                "latitude -90..90)"
            )


def check_tile_in_grid(tms: morecantile.TileMatrixSet, z: int, x: int, y: int) -> None:
    matrix = tms.matrix(z)
    if not (0 <= x < matrix.matrixWidth and 0 <= y < matrix.matrixHeight):
        raise OutsideGridError(
            f"tile {z}/{x}/{y} is outside the {tms.id} grid: at zoom {z} x is 0 to "
            f"{matrix.matrixWidth - 1} and y is 0 to {matrix.matrixHeight - 1}"
        )


# A feature posted to /feature or /statistics: as many vertices as an AOI may have.
MAX_FEATURE_VERTICES = 100_000


def feature_bounds(geojson: object, geographic: bool) -> tuple[float, float, float, float]:
    """The bounds of a posted GeoJSON Feature / FeatureCollection / geometry, after checking
    every position (finite, WGS84 where geographic) and the vertex count, cheaply in Python."""
    positions: list[list[float]] = []

    def walk(value: object, depth: int = 0) -> None:
        if depth > 6:
            raise InvalidTileRequestError("the GeoJSON is nested too deeply")
        if isinstance(value, dict) and "type" in value and _is_empty(value):
            raise InvalidTileRequestError(
                f"the GeoJSON holds an empty {value['type']} (no coordinates): remove it"
            )
        if isinstance(value, dict):
            for key in ("features", "geometry", "geometries", "coordinates"):
                if key in value:
                    walk(value[key], depth + 1)
        elif isinstance(value, list):
            if value and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                positions.append(value)  # type: ignore[arg-type]
                if len(positions) > MAX_FEATURE_VERTICES:
                    raise InvalidTileRequestError(
                        f"the GeoJSON has more than {MAX_FEATURE_VERTICES} vertices; simplify it"
                    )
            else:
                for item in value:
                    walk(item, depth + 1)

    walk(geojson)
    if not positions:
        raise InvalidTileRequestError("the GeoJSON has no coordinates")
    flat = [v for p in positions for v in p[:2]]
    check_coordinates(flat, geographic)
    xs, ys = flat[0::2], flat[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def _is_empty(geometry: dict) -> bool:
    """A geometry with no position anywhere in it (`[]`, `[[]]`, a collection of nothing)."""
    if "coordinates" in geometry:
        return not _has_position(geometry["coordinates"])
    if geometry.get("type") == "GeometryCollection":
        parts = geometry.get("geometries")
        return isinstance(parts, list) and not parts
    return False


def _has_position(value: object) -> bool:
    if not isinstance(value, list):
        return True  # not GeoJSON: titiler's validation names it
    if value and all(isinstance(v, int | float) for v in value):
        return True
    return any(_has_position(item) for item in value)


def check_extent_px(width_px: float, height_px: float, what: str = "the feature") -> None:
    check_read_extent(width_px, height_px, what, "pass max_size (or width and height)")


def check_has_area(bounds: tuple[float, float, float, float], what: str = "the feature") -> None:
    """A point, or a line along one axis, has no pixels to read."""
    if not (bounds[0] < bounds[2] and bounds[1] < bounds[3]):
        raise InvalidTileRequestError(
            f"{what} has no area (a point, or a line along one axis): image data needs a "
            "polygon or a box"
        )
