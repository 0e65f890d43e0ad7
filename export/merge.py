"""Merging cell results into one stream of objects: whole objects pass through cell by cell;
parts of objects cut by cell borders are unioned with their neighbours' parts.

Only parts are held in memory (objects larger than the object margin that cross a border), so
memory follows the number of such objects, not the size of the image.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
from shapely import STRtree

from export.cell_task import export_store, objects_key

OUTPUT_SCHEMA = pa.schema(
    [
        ("geometry", pa.binary()),
        ("class", pa.string()),
        ("score", pa.float32()),
        ("area_m2", pa.float64()),
        ("cell", pa.string()),
    ]
)


class ObjectStream:
    """Yields one table of whole objects per cell, then the merged parts (see `tables`)."""

    def __init__(
        self,
        export_dir: str | Path,
        cell_ids: Iterable[str],
        tolerance: float,
        aoi: shapely.Geometry | None = None,
    ) -> None:
        self.export_dir = export_dir
        self.cell_ids = list(cell_ids)
        self.tolerance = tolerance  # CRS units within which two parts count as touching
        self.aoi = aoi  # merged objects are kept when their representative point lies inside
        self._parts: list[pa.Table] = []

    def tables(self) -> Iterator[pa.Table]:
        store = export_store(self.export_dir)
        for cell_id in self.cell_ids:
            try:
                data = store.read_bytes(objects_key(cell_id))
            except FileNotFoundError:
                continue
            table = pq.read_table(pa.BufferReader(data))
            part = table.column("part")
            self._parts.append(table.filter(part))
            whole = table.filter(pc.invert(part))
            if whole.num_rows:
                yield whole.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
        merged = merge_parts(pa.concat_tables(self._parts) if self._parts else None, self.tolerance)
        if merged is not None and self.aoi is not None:
            points = shapely.point_on_surface(
                shapely.from_wkb(merged.column("geometry").to_numpy(zero_copy_only=False))
            )
            merged = merged.filter(pa.array(shapely.contains(self.aoi, points)))
        if merged is not None and merged.num_rows:
            yield merged


def merge_parts(parts: pa.Table | None, tolerance: float) -> pa.Table | None:
    """Union parts of the same class that touch (connected components), one object each."""
    if parts is None or parts.num_rows == 0:
        return None
    geometries = shapely.from_wkb(parts.column("geometry").to_numpy(zero_copy_only=False))
    classes = parts.column("class").to_pylist()
    scores = parts.column("score").to_numpy()
    areas = parts.column("area_m2").to_numpy()
    cells = parts.column("cell").to_pylist()
    parent = list(range(len(geometries)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Parts of one object meet across a cell border along a stretch of it; parts of two objects
    # that merely touch at a point (or lie in the same cell) stay apart.
    min_shared = 50 * tolerance  # tolerance is 1/100 px: at least half a pixel of border
    tree = STRtree(geometries)
    left, right = tree.query(geometries, predicate="dwithin", distance=tolerance)
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if i < j and classes[i] == classes[j] and cells[i] != cells[j]:
            shared = shapely.intersection(
                shapely.boundary(geometries[i]), shapely.buffer(geometries[j], tolerance)
            )
            if shapely.length(shared) >= min_shared:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(geometries)):
        groups.setdefault(find(i), []).append(i)
    rows = []
    for members in groups.values():
        member_areas = areas[members]
        union = shapely.union_all(geometries[members], grid_size=None)
        largest = members[int(np.argmax(member_areas))]
        rows.append(
            {
                "geometry": shapely.to_wkb(union),
                "class": classes[members[0]],
                "score": float(np.average(scores[members], weights=member_areas)),
                "area_m2": float(member_areas.sum()),
                "cell": cells[largest],
            }
        )
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
