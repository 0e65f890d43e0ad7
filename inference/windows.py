"""The fixed grid of inference windows over an image, at the detector's native resolution.

Windows are laid out in the image's own CRS from its top-left corner, whatever tile is asked for,
so every zoom and every display tile sees the same predictions, and neighbouring tiles share
windows. A window's *core* (its predictions are kept) tiles the plane without overlap; the model
reads the core plus `overlap_px` of context on every side.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from affine import Affine

from inference.format import DetectorSpec

Bounds = tuple[float, float, float, float]  # left, bottom, right, top in the image CRS


@dataclass(frozen=True)
class WindowIndex:
    col: int
    row: int


@dataclass(frozen=True)
class WindowGrid:
    origin_x: float  # image left edge
    origin_y: float  # image top edge
    pixel_size: float  # CRS units per native-resolution pixel
    core: int  # px
    overlap: int  # px
    cols: int
    rows: int

    @classmethod
    def for_image(cls, image_meta: dict, spec: DetectorSpec) -> WindowGrid:
        left, bottom, right, top = image_meta["bounds"]
        # CRS units per ground metre (1 for UTM, ~1/111000 for degrees, >1 for Web Mercator).
        units_per_metre = image_meta["resolution"][0] / image_meta["gsd"]
        pixel_size = spec.resolution_m * units_per_metre
        core_extent = spec.core_size * pixel_size
        return cls(
            origin_x=left,
            origin_y=top,
            pixel_size=pixel_size,
            core=spec.core_size,
            overlap=spec.overlap_px,
            cols=max(1, math.ceil((right - left) / core_extent)),
            rows=max(1, math.ceil((top - bottom) / core_extent)),
        )

    @property
    def core_extent(self) -> float:
        return self.core * self.pixel_size

    def core_bounds(self, index: WindowIndex) -> Bounds:
        left = self.origin_x + index.col * self.core_extent
        top = self.origin_y - index.row * self.core_extent
        return (left, top - self.core_extent, left + self.core_extent, top)

    def read_bounds(self, index: WindowIndex) -> Bounds:
        """The core plus its context margin: what the model reads."""
        margin = self.overlap * self.pixel_size
        left, bottom, right, top = self.core_bounds(index)
        return (left - margin, bottom - margin, right + margin, top + margin)

    def windows_for(self, bounds: Bounds) -> list[WindowIndex]:
        """Windows whose core intersects `bounds`, row by row; none outside the image."""
        left, bottom, right, top = bounds
        first_col = max(0, math.floor((left - self.origin_x) / self.core_extent))
        last_col = min(self.cols - 1, math.ceil((right - self.origin_x) / self.core_extent) - 1)
        first_row = max(0, math.floor((self.origin_y - top) / self.core_extent))
        last_row = min(self.rows - 1, math.ceil((self.origin_y - bottom) / self.core_extent) - 1)
        return [
            WindowIndex(col, row)
            for row in range(first_row, last_row + 1)
            for col in range(first_col, last_col + 1)
        ]

    def mosaic_transform(self, windows: list[WindowIndex]) -> tuple[Affine, int, int]:
        """Geotransform and size (width, height) of the mosaic of these windows' cores."""
        cols = [w.col for w in windows]
        rows = [w.row for w in windows]
        left = self.origin_x + min(cols) * self.core_extent
        top = self.origin_y - min(rows) * self.core_extent
        width = (max(cols) - min(cols) + 1) * self.core
        height = (max(rows) - min(rows) + 1) * self.core
        return Affine(self.pixel_size, 0, left, 0, -self.pixel_size, top), width, height

    def __iter__(self) -> Iterator[WindowIndex]:
        for row in range(self.rows):
            for col in range(self.cols):
                yield WindowIndex(col, row)
