"""Checks an uploaded raster before any record or file is created for it.

Validation is cheap on purpose (header plus a few sample blocks), so a bad upload is refused
within the request; the full read happens during COG conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Interleaving
from rasterio.errors import RasterioError
from rasterio.windows import Window

from tiles.errors import (
    CorruptImageError,
    NotARasterError,
    NotGeoreferencedError,
    UnsupportedFormatError,
    UnsupportedLayoutError,
    gdal_reason,
)

SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
ACCEPTED_DRIVERS = ("GTiff", "COG")


@dataclass(frozen=True)
class SourceLimits:
    """What an upload may declare in its header; checked before a single pixel is decoded."""

    max_bands: int = 32
    max_side: int = 500_000  # pixels; a 50000x50000 mosaic is routine
    max_pixels: int = 25_000_000_000  # width x height: 10x a routine 50000x50000 mosaic
    # Decoded bytes per byte of file. Real imagery compresses 2-30x, mostly empty mosaics about
    # 1000x (deflate's ceiling); tiles sharing one block or sparse files declare far more.
    max_expansion: float = 10_000.0
    expansion_floor_bytes: int = 1024**3  # small images may expand as they like
    max_block_bytes: int = 512 * 1024**2  # one decoded strip/tile: what a single read costs


@dataclass(frozen=True)
class SourceInfo:
    """What ingest needs to know about a validated source raster."""

    width: int
    height: int
    count: int
    dtype: str
    crs_wkt: str
    has_alpha: bool
    nodata: float | None

    @property
    def is_rgb8(self) -> bool:
        """8-bit RGB(A) imagery: the case JPEG/YCbCr compression suits."""
        return self.dtype == "uint8" and self.count in (3, 4)


def inspect_source(
    path: str | Path, limits: SourceLimits = SourceLimits(), file_bytes: int | None = None
) -> SourceInfo:
    """Validate a raster file for ingest, raising an InvalidImageError subclass that says why.

    `file_bytes`: the file's size, for the decompression-ratio check; a local file's is read
    here, a remote one's (a /vsi path) is what its server said, or None when unknown."""
    if file_bytes is None and not str(path).startswith("/vsi"):
        file_bytes = Path(path).stat().st_size
    try:
        src = rasterio.open(path)
    except RasterioError as exc:
        raise NotARasterError(
            f"not a raster file GDAL can read ({gdal_reason(exc, path)})"
        ) from exc
    with src:
        if src.driver not in ACCEPTED_DRIVERS:
            raise UnsupportedFormatError(
                f"only GeoTIFF is accepted, this file is {src.driver}; convert it with "
                "gdal_translate -of GTiff"
            )
        # Header checks first: they cost nothing however large the image claims to be, and they
        # bound what the pixel check reads. A truncated header shows up as unreadable pixels
        # before its missing georeference keys are blamed.
        _check_layout(src, limits)
        _check_declared_size(src, file_bytes, limits)
        _check_pixels_readable(src, path)
        _check_georeference(src)
        has_alpha = ColorInterp.alpha in src.colorinterp
        return SourceInfo(
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            crs_wkt=src.crs.to_wkt(),
            has_alpha=has_alpha,
            nodata=src.nodata,
        )


def _check_georeference(src: rasterio.DatasetReader) -> None:
    if src.crs is None:
        if src.gcps[0]:
            raise NotGeoreferencedError(
                "the image is georeferenced only by ground control points; warp it to a CRS "
                "first (gdalwarp)"
            )
        raise NotGeoreferencedError(
            "the image has no georeference (no coordinate reference system)"
        )
    if src.transform.is_identity:
        raise NotGeoreferencedError(
            "the image has a CRS but no geotransform, so it has no location"
        )


def _check_layout(src: rasterio.DatasetReader, limits: SourceLimits) -> None:
    if src.count < 1:
        raise UnsupportedLayoutError("the image has no bands")
    if src.count > limits.max_bands:
        raise UnsupportedLayoutError(
            f"the image has {src.count} bands; at most {limits.max_bands} are supported"
        )
    if len(set(src.dtypes)) > 1:
        raise UnsupportedLayoutError(
            f"the bands have different data types ({', '.join(sorted(set(src.dtypes)))})"
        )
    if src.dtypes[0] not in SUPPORTED_DTYPES:
        raise UnsupportedLayoutError(
            f"data type {src.dtypes[0]} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}"
        )
    if src.width < 1 or src.height < 1:
        raise UnsupportedLayoutError("the image is empty (zero width or height)")
    if max(src.width, src.height) > limits.max_side:
        raise UnsupportedLayoutError(
            f"the image is {src.width}x{src.height} px; at most {limits.max_side} px per side"
        )


def _check_declared_size(
    src: rasterio.DatasetReader, file_bytes: int | None, limits: SourceLimits
) -> None:
    """Refuse what would take hours or all memory to decode, judged from the header alone."""
    pixels = src.width * src.height
    if pixels > limits.max_pixels:
        raise UnsupportedLayoutError(
            f"the image is {src.width}x{src.height} px ({pixels:.3g} pixels); at most "
            f"{limits.max_pixels:.3g} pixels are supported"
        )
    itemsize = np.dtype(src.dtypes[0]).itemsize
    block_h, block_w = src.block_shapes[0]
    planes = src.count if src.interleaving != Interleaving.band else 1
    block = block_h * block_w * planes * itemsize
    if block > limits.max_block_bytes:
        raise UnsupportedLayoutError(
            f"the image is stored in {block_w}x{block_h} px blocks of {_size(block)} each; at "
            f"most {_size(limits.max_block_bytes)}: rewrite it tiled "
            "(gdal_translate -co TILED=YES)"
        )

    if file_bytes is None:
        return  # a remote COG of unknown size: read in place block by block, never decoded whole
    decoded = pixels * src.count * itemsize
    if decoded > limits.expansion_floor_bytes and decoded > limits.max_expansion * file_bytes:
        raise UnsupportedLayoutError(
            f"the image declares {_size(decoded)} of pixels in a {_size(file_bytes)} file "
            f"({decoded / max(file_bytes, 1):.0f} times larger; at most "
            f"{limits.max_expansion:.0f}): "
            "a decompression bomb, or a sparse file with most blocks missing"
        )


def _size(count: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _check_pixels_readable(src: rasterio.DatasetReader, path: str | Path) -> None:
    """Read the first, middle and last blocks: a truncated file fails on the later ones."""
    block_h, block_w = src.block_shapes[0]
    rows = sorted(
        {0, (src.height // 2 // block_h) * block_h, ((src.height - 1) // block_h) * block_h}
    )
    cols = sorted({0, ((src.width - 1) // block_w) * block_w})
    try:
        for row in rows:
            for col in cols:
                window = Window(
                    col, row, min(block_w, src.width - col), min(block_h, src.height - row)
                )
                src.read(window=window)
    except RasterioError as exc:
        raise CorruptImageError(
            "the pixel data cannot be read; the file may be truncated or corrupt "
            f"({gdal_reason(exc, path)})"
        ) from exc
