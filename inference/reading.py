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
    pixels = image.array.data.astype(np.float32) / 255.0
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    standardised = (pixels - mean) / std
    valid = ~np.ma.getmaskarray(image.array).any(axis=0)
    return np.where(valid[None], standardised, 0.0).astype(np.float32)
