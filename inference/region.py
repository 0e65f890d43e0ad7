"""Probabilities over any rectangle on the window lattice, from one read of its pixels.

Bulk export cells and training evaluation use this; its chunks keep to the network's stride
lattice from the image origin and read the detector's context margin around each, so the result
equals what the on-the-fly windows give for the same pixels.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from inference.format import DetectorSpec
from inference.reading import read_region
from inference.session import Detector

LATTICE_PX = 16  # the networks' total stride: chunk sizes and offsets stay on it


@dataclass(frozen=True)
class RegionRequest:
    cog_path: str
    crs_wkt: str
    image_gsd: float
    origin_x: float  # top-left corner, image CRS, on the lattice
    origin_y: float
    width: int  # px at the detector's resolution, multiples of LATTICE_PX
    height: int
    pixel_size: float  # CRS units per native pixel


def snapped_request(
    cog_path: str,
    meta: dict,
    bounds: tuple[float, float, float, float],
    pixel_size: float,
) -> RegionRequest:
    """The smallest lattice-aligned rectangle (from the image's top-left) covering `bounds`."""
    image_left, _, _, image_top = meta["bounds"]
    step = LATTICE_PX * pixel_size
    left, bottom, right, top = bounds
    col0 = math.floor((left - image_left) / step)
    row0 = math.floor((image_top - top) / step)
    col1 = math.ceil((right - image_left) / step)
    row1 = math.ceil((image_top - bottom) / step)
    return RegionRequest(
        cog_path=cog_path,
        crs_wkt=meta["crs_wkt"],
        image_gsd=meta["gsd"],
        origin_x=image_left + col0 * step,
        origin_y=image_top - row0 * step,
        width=max(1, col1 - col0) * LATTICE_PX,
        height=max(1, row1 - row0) * LATTICE_PX,
        pixel_size=pixel_size,
    )


def infer_region(request: RegionRequest, detector: Detector) -> tuple[np.ndarray, Affine, dict]:
    """(classes + 1, height, width) probabilities, their geotransform, and read/infer seconds."""
    spec = detector.spec
    pixel, context = request.pixel_size, spec.overlap_px
    x0, y0 = request.origin_x, request.origin_y
    width, height = request.width, request.height
    started = time.perf_counter()
    pixels = read_region(
        request.cog_path,
        CRS.from_wkt(request.crs_wkt),
        (
            x0 - context * pixel,
            y0 - (height + context) * pixel,
            x0 + (width + context) * pixel,
            y0 + context * pixel,
        ),
        (width + 2 * context, height + 2 * context),
        spec,
        request.image_gsd,
    )
    read_seconds = time.perf_counter() - started
    fixed = detector.fixed_input
    row_spans = _spans(chunk_edges(height, spec, fixed))
    col_spans = _spans(chunk_edges(width, spec, fixed))
    # Same-shaped chunks go to the model together (GPU batching); on CPU one at a time is as fast.
    batch = 8 if detector.provider == "CUDAExecutionProvider" else 1
    by_shape: dict[tuple[int, int], list] = {}
    for rows in row_spans:
        for cols in col_spans:
            shape = (spec.tile_size,) * 2 if fixed else (rows[1] - rows[0], cols[1] - cols[0])
            by_shape.setdefault(shape, []).append((rows, cols))
    probabilities = np.empty((spec.channels, height, width), np.float32)
    infer_seconds = 0.0
    for group in by_shape.values():
        for first in range(0, len(group), batch):
            members = group[first : first + batch]
            inputs = np.stack(
                [_chunk_input(pixels, rows, cols, spec, fixed) for rows, cols in members]
            )
            began = time.perf_counter()
            outputs = detector.run(inputs)
            infer_seconds += time.perf_counter() - began
            for ((r0, r1), (c0, c1)), out in zip(members, outputs, strict=True):
                probabilities[:, r0:r1, c0:c1] = out[
                    :, context : context + r1 - r0, context : context + c1 - c0
                ]
    transform = Affine(pixel, 0, x0, 0, -pixel, y0)
    timings = {"read_seconds": round(read_seconds, 3), "infer_seconds": round(infer_seconds, 3)}
    return probabilities, transform, timings


def chunk_edges(size: int, spec: DetectorSpec, whole_windows: bool = False) -> list[int]:
    """Split `size` px (a lattice multiple) into chunks no larger than a window core (or the
    detector's region_chunk_px, when it allows bigger ones).

    Near-equal lattice-sized chunks by default; with `whole_windows` (fixed-input models)
    chunks of exactly the core, the last one shorter (its input is padded to a window).
    """
    if size <= 0 or size % LATTICE_PX:
        raise ValueError(
            f"a region side must be a positive multiple of {LATTICE_PX} px, not {size}"
        )
    if whole_windows:
        return [*range(0, size, spec.core_size), size]
    units = size // LATTICE_PX
    count = math.ceil(size / max(spec.core_size, spec.region_chunk_px))
    base, extra = divmod(units, count)
    edges = [0]
    for i in range(count):
        edges.append(edges[-1] + (base + (1 if i < extra else 0)) * LATTICE_PX)
    return edges


def _chunk_input(
    pixels: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
    spec: DetectorSpec,
    whole_window: bool,
) -> np.ndarray:
    """A chunk with its context; padded past the context to a whole window when required."""
    (r0, r1), (c0, c1) = rows, cols
    context = spec.overlap_px
    chunk = pixels[:, r0 : r1 + 2 * context, c0 : c1 + 2 * context]
    if not whole_window:
        return chunk
    short_rows, short_cols = spec.tile_size - chunk.shape[1], spec.tile_size - chunk.shape[2]
    return np.pad(chunk, ((0, 0), (0, short_rows), (0, short_cols)))


def _spans(edges: list[int]) -> list[tuple[int, int]]:
    return list(zip(edges[:-1], edges[1:], strict=True))
