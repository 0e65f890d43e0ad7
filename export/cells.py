"""The grid of export cells: blocks of whole inference windows in the image's pixel space.

A cell's core is a whole number of the detector's window cores, laid on the same lattice as the
on-the-fly windows, so an export finds exactly the objects the map shows. Each cell infers its
core plus an object margin, so objects near a border are seen whole by the cell that owns them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from inference.windows import Bounds, WindowGrid

DEFAULT_CELL_PX = 2048  # target cell core size; rounded to whole windows


@dataclass(frozen=True)
class Cell:
    col: int
    row: int
    bounds: Bounds  # the core, image CRS

    @property
    def id(self) -> str:
        return f"r{self.row:05d}c{self.col:05d}"


@dataclass(frozen=True)
class CellGrid:
    windows: WindowGrid
    windows_per_cell: int

    @classmethod
    def for_windows(cls, windows: WindowGrid, cell_px: int = DEFAULT_CELL_PX) -> CellGrid:
        return cls(windows, max(1, round(cell_px / windows.core)))

    @property
    def cell_px(self) -> int:
        return self.windows_per_cell * self.windows.core

    @property
    def cols(self) -> int:
        return math.ceil(self.windows.cols / self.windows_per_cell)

    @property
    def rows(self) -> int:
        return math.ceil(self.windows.rows / self.windows_per_cell)

    def cell(self, col: int, row: int) -> Cell:
        # Each edge from the origin, so neighbours share their border coordinates bit for bit.
        size = self.cell_px * self.windows.pixel_size
        x0, y0 = self.windows.origin_x, self.windows.origin_y
        bounds = (x0 + col * size, y0 - (row + 1) * size, x0 + (col + 1) * size, y0 - row * size)
        return Cell(col, row, bounds)

    def cells(self, area: BaseGeometry | None = None) -> Iterator[Cell]:
        """Cells in row-major order; with `area` (image CRS), only those whose core meets it."""
        for row in range(self.rows):
            for col in range(self.cols):
                cell = self.cell(col, row)
                if area is None or area.intersects(box(*cell.bounds)):
                    yield cell
