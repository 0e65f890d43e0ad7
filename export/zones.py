"""Counts per zone (Picterra's "plots analysis"): the user's zones (fields, parcels, stands) with,
per class, how many objects a finished export found in each, their density per hectare and the
area they cover.

An object counts in a zone when its representative point lies in it, so an object across a
zone border counts once, in the zone holding most of it, never in both neighbours (zones that
overlap each count it: they are separate questions). Zone areas are geodesic (WGS84 ellipsoid),
so densities are right at any latitude; covered areas are the objects' own `area_m2`.

Outputs: the long table, one row per zone and class (CSV without geometry, GeoParquet with the
zone's polygon), and the zones themselves with one column per class and figure (GeoPackage,
GeoJSON), the zone's own properties kept in both.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import shapely
from pyproj import CRS, Geod, Transformer
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from export.run import ExportInputError
from export.writers import Format, write_geoparquet

MAX_ZONES = 10_000
ZONE_FORMATS = {  # name -> (media type, extension)
    "csv": ("text/csv", ".csv"),
    "parquet": ("application/vnd.apache.parquet", ".parquet"),
    "gpkg": ("application/geopackage+sqlite3", ".gpkg"),
    "geojson": ("application/geo+json", ".geojson"),
}
FIGURES = ("count", "per_ha", "area_m2")  # per class, in the zone layers' columns
_GEOD = Geod(ellps="WGS84")
_WGS84 = CRS.from_epsg(4326)


class ZonesError(ExportInputError):
    """Zones that cannot be understood; names the feature."""


@dataclass(frozen=True)
class Zones:
    geometries: list[BaseGeometry]  # WGS84
    properties: list[dict[str, Any]]


@dataclass(frozen=True)
class ZoneCounts:
    zones: Zones
    classes: tuple[str, ...]
    area_ha: np.ndarray  # per zone
    counts: np.ndarray  # (zones, classes)
    covered_m2: np.ndarray  # (zones, classes)

    def per_ha(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.area_ha[:, None] > 0, self.counts / self.area_ha[:, None], 0.0)


def parse_zones(collection: Any) -> Zones:
    """A WGS84 FeatureCollection of Polygon/MultiPolygon zones; 422 naming the first bad one."""
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        raise ZonesError('zones must be a GeoJSON object with "type": "FeatureCollection"')
    features = collection.get("features")
    if not isinstance(features, list) or not features:
        raise ZonesError("the FeatureCollection has no zones: draw or upload at least one")
    if len(features) > MAX_ZONES:
        raise ZonesError(f"{len(features)} zones; at most {MAX_ZONES}")
    geometries, properties = [], []
    for index, feature in enumerate(features):
        geometry = _zone_geometry(feature, index)
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            raise ZonesError(f"zone {index}: properties must be an object or null")
        geometries.append(geometry)
        properties.append(props)
    return Zones(geometries, properties)


def _zone_geometry(feature: Any, index: int) -> BaseGeometry:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise ZonesError(f"zone {index}: not a GeoJSON Feature")
    raw = feature.get("geometry")
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("Polygon", "MultiPolygon"):
        raise ZonesError(f"zone {index}: a zone must be a Polygon or MultiPolygon, not {kind!r}")
    try:
        geometry = shape(raw)
    except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.GEOSException):
        raise ZonesError(f"zone {index}: coordinates are not a valid {kind}") from None
    coords = shapely.get_coordinates(geometry)
    if geometry.is_empty or not np.isfinite(coords).all():
        raise ZonesError(f"zone {index}: the {kind} is empty or has non-finite coordinates")
    if (
        not ((coords[:, 0] >= -180) & (coords[:, 0] <= 180)).all()
        or not ((coords[:, 1] >= -90) & (coords[:, 1] <= 90)).all()
    ):
        raise ZonesError(f"zone {index}: positions are outside WGS84 longitude/latitude")
    if not geometry.is_valid:
        raise ZonesError(f"zone {index}: invalid {kind}: {shapely.is_valid_reason(geometry)}")
    return geometry


def read_objects(path: Path, fmt: Format) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An export's objects: WGS84 geometries, classes and areas (m²)."""
    if fmt.driver is None:
        table = pq.read_table(path, columns=["geometry", "class", "area_m2"])
        geo = json.loads(table.schema.metadata[b"geo"])
        crs = CRS.from_json_dict(geo["columns"]["geometry"]["crs"])
    else:
        meta, table = pyogrio.read_arrow(path, columns=["class", "area_m2"])
        crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else _WGS84
        table = table.rename_columns(
            ["geometry" if name == meta["geometry_name"] or name == "wkb_geometry" else name
             for name in table.column_names]
        )  # fmt: skip
    geometries = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    if crs != _WGS84 and len(geometries):
        move = Transformer.from_crs(crs, _WGS84, always_xy=True)
        geometries = shapely.transform(
            geometries, lambda xy: np.column_stack(move.transform(xy[:, 0], xy[:, 1]))
        )
    classes = np.asarray(table.column("class").to_pylist(), dtype=object)
    areas = np.asarray(table.column("area_m2").to_numpy(zero_copy_only=False), np.float64)
    return geometries, classes, areas


def count_zones(
    zones: Zones,
    geometries: np.ndarray,
    object_classes: np.ndarray,
    areas_m2: np.ndarray,
    classes: Sequence[str],
) -> ZoneCounts:
    """Objects per zone and class, each counted where its representative point falls."""
    classes = tuple(classes)
    counts = np.zeros((len(zones.geometries), len(classes)), np.int64)
    covered = np.zeros((len(zones.geometries), len(classes)), np.float64)
    if len(geometries):
        points = shapely.point_on_surface(geometries)
        tree = shapely.STRtree(np.asarray(zones.geometries, dtype=object))
        point_index, zone_index = tree.query(points, predicate="within")
        column = {name: i for i, name in enumerate(classes)}
        for p, z in zip(point_index, zone_index, strict=True):
            c = column.get(object_classes[p])
            if c is not None:
                counts[z, c] += 1
                covered[z, c] += areas_m2[p]
    area_ha = np.array([abs(_GEOD.geometry_area_perimeter(g)[0]) / 1e4 for g in zones.geometries])
    return ZoneCounts(zones, classes, area_ha, counts, covered)


# --- outputs -------------------------------------------------------------------------------------


def write_zone_counts(result: ZoneCounts, path: Path, fmt: str) -> None:
    """The long table (csv, parquet) or the zones with their columns (gpkg, geojson)."""
    if fmt == "csv":
        _write_csv(result, path)
    elif fmt == "parquet":
        _write_parquet(result, path)
    elif fmt in ("gpkg", "geojson"):
        _write_layer(result, path, fmt)
    else:
        raise ZonesError(f"zone counts come as one of {', '.join(ZONE_FORMATS)}, not {fmt!r}")


def _long_rows(result: ZoneCounts) -> list[dict[str, Any]]:
    names = _property_names(result)
    per_ha = result.per_ha()
    rows = []
    for z, props in enumerate(result.zones.properties):
        own = {names[key]: _scalar(value) for key, value in props.items()}
        for c, cls in enumerate(result.classes):
            covered = float(result.covered_m2[z, c])
            area_m2 = result.area_ha[z] * 1e4
            rows.append(
                {
                    "zone": z,
                    **own,
                    "class": cls,
                    "count": int(result.counts[z, c]),
                    "per_ha": round(float(per_ha[z, c]), 4),
                    "area_m2": round(covered, 2),
                    "cover_share": round(covered / area_m2, 6) if area_m2 else 0.0,
                    "zone_area_ha": round(float(result.area_ha[z]), 6),
                }
            )
    return rows


_OWN_COLUMNS = {"zone", "class", "count", "per_ha", "area_m2", "cover_share", "zone_area_ha"}


def _property_names(result: ZoneCounts) -> dict[str, str]:
    """The zones' own property names, prefixed `zone_` where one would clash with ours."""
    keys = dict.fromkeys(k for props in result.zones.properties for k in props)
    columns = {f"{cls}_{figure}" for cls in result.classes for figure in FIGURES}
    return {k: f"zone_{k}" if k in _OWN_COLUMNS | columns else k for k in keys}


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value)


def _write_csv(result: ZoneCounts, path: Path) -> None:
    rows = _long_rows(result)
    header = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def _write_parquet(result: ZoneCounts, path: Path) -> None:
    rows = _long_rows(result)
    wkb = shapely.to_wkb(np.asarray(result.zones.geometries, dtype=object))
    for row in rows:
        row["geometry"] = wkb[row["zone"]]
    table = pa.Table.from_pylist(rows)
    write_geoparquet(iter(table.to_batches()), path, _WGS84, schema=table.schema)


def _write_layer(result: ZoneCounts, path: Path, fmt: str) -> None:
    names = _property_names(result)
    per_ha = result.per_ha()
    columns: dict[str, list] = {"zone": list(range(len(result.zones.geometries)))}
    for key, name in names.items():
        columns[name] = [_scalar(p.get(key)) for p in result.zones.properties]
    columns["zone_area_ha"] = [round(float(a), 6) for a in result.area_ha]
    for c, cls in enumerate(result.classes):
        columns[f"{cls}_count"] = [int(v) for v in result.counts[:, c]]
        columns[f"{cls}_per_ha"] = [round(float(v), 4) for v in per_ha[:, c]]
        columns[f"{cls}_area_m2"] = [round(float(v), 2) for v in result.covered_m2[:, c]]
    columns["geometry"] = list(shapely.to_wkb(np.asarray(result.zones.geometries, dtype=object)))
    table = pa.table(columns)
    driver = "GPKG" if fmt == "gpkg" else "GeoJSON"
    options = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
    pyogrio.write_arrow(
        table,
        str(path),
        layer="zones",
        driver=driver,
        geometry_name="geometry",
        geometry_type="Unknown",
        crs=_WGS84.to_wkt(),
        layer_options=options,
    )
