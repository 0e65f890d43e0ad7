"""Checks on what a tile or image-data request asks for, before any pixel is read.

titiler validates types; these bound the work: an output of 100000x100000 px, a buffer of 1e9 px
or a band 0 would otherwise fail deep inside numpy or GDAL (or exhaust memory) as a 500.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import morecantile

from tiles.errors import InvalidTileRequestError, OutsideGridError

# Largest output side in pixels: 16x a 256 px tile, 4x a 1024 px preview.
MAX_OUTPUT_SIDE = 4096


def check_output_side(name: str, value: float) -> None:
    if not math.isfinite(value) or value > MAX_OUTPUT_SIDE:
        raise InvalidTileRequestError(
            f"{name}={value:g} is too large: outputs are at most {MAX_OUTPUT_SIDE} px per side"
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
    """Coordinates must be finite numbers; longitude/latitude also within WGS84's range."""
    values = list(values)
    if not all(math.isfinite(v) for v in values):
        raise InvalidTileRequestError(f"coordinates must be finite numbers, not {values}")
    if geographic:
        longitudes, latitudes = values[0::2], values[1::2]
        if any(abs(x) > 180 for x in longitudes) or any(abs(y) > 90 for y in latitudes):
            raise InvalidTileRequestError(
                f"coordinates {values} are outside WGS84 (longitude -180..180, latitude -90..90)"
            )


def check_tile_in_grid(tms: morecantile.TileMatrixSet, z: int, x: int, y: int) -> None:
    matrix = tms.matrix(z)
    if not (0 <= x < matrix.matrixWidth and 0 <= y < matrix.matrixHeight):
        raise OutsideGridError(
            f"tile {z}/{x}/{y} is outside the {tms.id} grid: at zoom {z} x is 0 to "
            f"{matrix.matrixWidth - 1} and y is 0 to {matrix.matrixHeight - 1}"
        )
