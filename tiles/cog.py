"""Writes a Cloud-Optimized GeoTIFF with rio-cogeo, keeping the source's CRS and resolution."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from pathlib import Path

from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from tiles.source import SourceInfo

ProgressCallback = Callable[[float], None]

BLOCK_SIZE = 512
JPEG_QUALITY = 90
# Share of the work spent copying blocks; overviews and the final layout take the rest.
_COPY_SHARE = 0.7


def cog_profile_for(info: SourceInfo) -> dict:
    """Compression that suits the data: JPEG/YCbCr for 8-bit RGB, lossless deflate otherwise."""
    if info.is_rgb8:
        profile = dict(cog_profiles.get("jpeg"))
        profile.update(quality=JPEG_QUALITY, photometric="YCbCr")
    else:
        profile = dict(cog_profiles.get("deflate"))
        is_float = info.dtype.startswith("float")
        profile.update(predictor=3 if is_float else 2, zlevel=6)
    profile.update(blockxsize=BLOCK_SIZE, blockysize=BLOCK_SIZE, BIGTIFF="IF_SAFER")
    return profile


def write_cog(
    source: str | Path,
    destination: str | Path,
    info: SourceInfo,
    progress: ProgressCallback | None = None,
) -> None:
    """Convert `source` to a COG at `destination` (overwritten; not atomic: use a temp path)."""
    profile = cog_profile_for(info)
    # JPEG has no alpha channel: an alpha band becomes an internal mask instead.
    jpeg_with_alpha = info.is_rgb8 and info.has_alpha
    sink = _ClickProgressSink(progress) if progress else None
    # NaN is never a measurement: a float image without a nodata value gets NaN as its nodata,
    # so NaN pixels are masked in tiles and left out of statistics.
    nodata = math.nan if info.dtype.startswith("float") and info.nodata is None else None
    cog_translate(
        str(source),
        str(destination),
        profile,
        indexes=(1, 2, 3) if jpeg_with_alpha else None,
        add_mask=jpeg_with_alpha,
        nodata=nodata,
        overview_resampling="average",
        in_memory=False,
        quiet=sink is None,
        progress_out=sink,
        config={"GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_TIFF_INTERNAL_MASK": True},
    )
    if progress:
        progress(1.0)


class _ClickProgressSink(io.StringIO):
    """rio-cogeo reports progress only through click's progress bar; read its percentages."""

    _percent = re.compile(r"(\d{1,3})%")

    def __init__(self, progress: ProgressCallback) -> None:
        super().__init__()
        self._progress = progress
        self._last = -1

    def isatty(self) -> bool:  # click renders its bar only on a terminal
        return True

    def write(self, text: str) -> int:
        found = self._percent.findall(text)
        if found:
            percent = int(found[-1])
            if percent != self._last:
                self._last = percent
                self._progress(_COPY_SHARE * percent / 100)
        elif "overviews" in text:
            self._progress(_COPY_SHARE)
        elif "Writing output" in text:
            self._progress(0.9)
        return len(text)
