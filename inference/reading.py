"""Reads model input through rio-tiler, the same reader imagery tiles use, so training, serving
and export see the same pixels."""

from __future__ import annotations

import numpy as np
from rasterio.crs import CRS
from rio_tiler.io import Reader

from inference.errors import IncompatibleImageError
from inference.format import DetectorSpec
from inference.windows import Bounds


def check_bands(spec: DetectorSpec, image_meta: dict) -> None:
    """A detector needs its input bands in the image (and 8-bit scaling to make sense)."""
    count = image_meta["count"]
    missing = [band for band in spec.input_bands if band > count]
    if missing:
        raise IncompatibleImageError(
            f"the detector reads bands {list(spec.input_bands)} but the image has {count} "
            f"band(s); it needs an image with at least {max(spec.input_bands)} bands"
        )


def read_region(
    cog_path: str,
    crs: CRS,
    bounds: Bounds,
    size: tuple[int, int],
    spec: DetectorSpec,
    image_gsd: float,
) -> np.ndarray:
    """Standardised float32 (bands, height, width) of `bounds` (image CRS); 0 where no data."""
    width, height = size
    # Shrinking finer imagery to the detector's resolution averages; otherwise interpolate.
    resampling = "average" if image_gsd < 0.9 * spec.resolution_m else "bilinear"
    with Reader(cog_path) as reader:
        image = reader.part(
            bounds,
            dst_crs=crs,
            bounds_crs=crs,
            width=width,
            height=height,
            indexes=spec.input_bands,
            resampling_method=resampling,
            reproject_method="bilinear",
        )
    # (x / 255 - mean) / std as one scale and one offset, in place: export cells are 15 Mpx and
    # every pass over them costs as much as decoding their JPEG blocks.
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    pixels = image.array.data.astype(np.float32)
    pixels *= (1.0 / (255.0 * std))[:, None, None]
    pixels -= (mean / std)[:, None, None]
    nodata = np.ma.getmaskarray(image.array).any(axis=0)
    if nodata.any():
        pixels[:, nodata] = 0.0
    return pixels
