"""Vector output: a stream of object tables written to GeoJSON, GeoPackage, FlatGeobuf or
GeoParquet, one table at a time, so memory does not grow with the number of objects.

GDAL (through pyogrio's Arrow stream writer) writes the first three; GeoParquet goes through
pyarrow's Parquet writer with the GeoParquet 1.1 `geo` metadata, as GDAL's Parquet driver is not
in the pyogrio wheels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyogrio.raw import write_arrow
from pyproj import CRS, Transformer

from export.merge import OUTPUT_SCHEMA

WGS84 = CRS.from_epsg(4326)


@dataclass(frozen=True)
class Format:
    name: str
    extension: str
    media_type: str
    driver: str | None  # GDAL driver; None = GeoParquet via pyarrow
    fixed_crs: CRS | None = None  # GeoJSON is WGS84 by RFC 7946


FORMATS = {
    "geojson": Format("geojson", ".geojson", "application/geo+json", "GeoJSON", WGS84),
    "gpkg": Format("gpkg", ".gpkg", "application/geopackage+sqlite3", "GPKG"),
    "fgb": Format("fgb", ".fgb", "application/flatgeobuf", "FlatGeobuf"),
    "parquet": Format("parquet", ".parquet", "application/vnd.apache.parquet", None),
}
FORMAT_BY_EXTENSION = {f.extension: f for f in FORMATS.values()}


class UnknownFormatError(ValueError):
    pass


def format_named(name: str) -> Format:
    key = name.lower().lstrip(".")
    if key not in FORMATS:
        raise UnknownFormatError(
            f"unknown export format {name!r}; choose one of {', '.join(sorted(FORMATS))}"
        )
    return FORMATS[key]


def format_for_path(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMAT_BY_EXTENSION:
        raise UnknownFormatError(
            f"cannot tell the format of {Path(path).name!r}; use one of "
            + ", ".join(sorted(FORMAT_BY_EXTENSION))
        )
    return FORMAT_BY_EXTENSION[suffix]


@dataclass
class Summary:
    """Count and total area per class, accumulated as tables stream past."""

    classes: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        names = table.column("class").to_pylist()
        areas = table.column("area_m2").to_numpy()
        for name, area in zip(names, areas, strict=True):
            entry = self.classes.setdefault(name, {"count": 0, "area_m2": 0.0})
            entry["count"] += 1
            entry["area_m2"] += float(area)

    @property
    def objects(self) -> int:
        return int(sum(e["count"] for e in self.classes.values()))

    def as_dict(self) -> dict:
        return {
            "objects": self.objects,
            "classes": {
                name: {"count": int(e["count"]), "area_m2": round(e["area_m2"], 2)}
                for name, e in sorted(self.classes.items())
            },
        }


def write_objects(
    tables: Iterable[pa.Table],
    path: str | Path,
    fmt: Format,
    source_crs: CRS,
    target_crs: CRS | None = None,
) -> Summary:
    """Write every table to `path` in `fmt`, reprojected to the format's or the requested CRS."""
    crs = fmt.fixed_crs or target_crs or source_crs
    summary = Summary()
    transformer = (
        None if crs == source_crs else Transformer.from_crs(source_crs, crs, always_xy=True)
    )

    def reprojected() -> Iterator[pa.RecordBatch]:
        for table in tables:
            summary.add(table)
            if transformer is not None:
                table = _reproject(table, transformer)
            yield from table.to_batches()

    if fmt.driver is None:
        write_geoparquet(reprojected(), path, crs)
    else:
        options = {"RFC7946": "YES", "WRITE_BBOX": "YES"} if fmt.driver == "GeoJSON" else {}
        if fmt.driver == "GPKG":
            options = {"SPATIAL_INDEX": "YES"}
        reader = pa.RecordBatchReader.from_batches(OUTPUT_SCHEMA, reprojected())
        write_arrow(
            reader,
            str(path),
            layer="objects",
            driver=fmt.driver,
            geometry_name="geometry",
            geometry_type="Unknown",
            crs=crs.to_wkt(),
            layer_options=options,
        )
    return summary


def _reproject(table: pa.Table, transformer: Transformer) -> pa.Table:
    geometries = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))

    def move(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    moved = shapely.transform(geometries, move)
    index = table.schema.get_field_index("geometry")
    return table.set_column(index, "geometry", pa.array(shapely.to_wkb(moved), pa.binary()))


def write_geoparquet(
    batches: Iterator[pa.RecordBatch],
    path: str | Path,
    crs: CRS,
    schema: pa.Schema = OUTPUT_SCHEMA,
) -> None:
    """Batches with a WKB `geometry` column as GeoParquet 1.1 (the `geo` metadata: encoding,
    geometry types, CRS as PROJJSON, bbox)."""
    bounds = [np.inf, np.inf, -np.inf, -np.inf]
    kinds: set[str] = set()
    with pq.ParquetWriter(str(path), schema, compression="zstd") as writer:
        for batch in batches:
            geometries = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
            if len(geometries):
                box = shapely.total_bounds(geometries)
                bounds = [min(bounds[0], box[0]), min(bounds[1], box[1])] + [
                    max(bounds[2], box[2]),
                    max(bounds[3], box[3]),
                ]
                kinds.update(shapely.get_type_id(geometries).tolist())
            writer.write_batch(batch)
        column = {
            "encoding": "WKB",
            "geometry_types": sorted(_TYPE_NAMES[k] for k in kinds),
            "crs": crs.to_json_dict(),
        }
        if np.isfinite(bounds).all():
            column["bbox"] = [float(v) for v in bounds]
        geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
        writer.add_key_value_metadata({"geo": json.dumps(geo)})


_TYPE_NAMES = {3: "Polygon", 6: "MultiPolygon", 7: "GeometryCollection"}
