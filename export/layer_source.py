"""A finished export's objects as a detection layer's source at zooms too low for on-the-fly
inference: read from its GeoPackage through the R-tree index, only what a tile touches."""

from __future__ import annotations

import pyogrio
import shapely

from inference.format import DetectorSpec
from inference.objects import DetectedObject


def objects_in_bounds(path, bounds: tuple[float, ...], spec: DetectorSpec) -> list[DetectedObject]:
    """Objects of the export at `path` whose bounding box meets `bounds` (image CRS)."""
    meta, table = pyogrio.read_arrow(path, bbox=tuple(bounds))
    if table.num_rows == 0:
        return []
    geometries = shapely.from_wkb(table.column(meta["geometry_name"]).to_numpy(False))
    index = {name: i for i, name in enumerate(spec.class_names)}
    return [
        DetectedObject(name, index.get(name, 0), float(score), geometry, float(area))
        for name, score, geometry, area in zip(
            table.column("class").to_pylist(),
            table.column("score").to_pylist(),
            geometries,
            table.column("area_m2").to_pylist(),
            strict=True,
        )
    ]
