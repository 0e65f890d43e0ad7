"""Detected objects as GeoJSON (RFC 7946) and as Mapbox Vector Tiles.

Both carry the same properties per object: `class` (name), `score` (mean class probability,
3 decimals) and `area_m2` (2 decimals), so a map, a download and an export read alike.
Geometry work is vectorised over all objects (one CRS transform, one snap), since these run
per map tile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import mapbox_vector_tile
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping
from shapely.geometry.base import BaseGeometry

from inference.objects import DetectedObject

LONLAT_GRID = 1e-7  # degrees, about 1 cm: GeoJSON coordinates are snapped to it, kept valid

Transform = Callable[..., Any]
Bounds = tuple[float, float, float, float]


def object_properties(obj: DetectedObject) -> dict[str, str | float]:
    """The properties every encoding carries for one object."""
    return {"class": obj.class_name, "score": round(obj.score, 3), "area_m2": round(obj.area_m2, 2)}


def objects_to_geojson(
    objects: Iterable[DetectedObject], to_wgs84: Transform | None
) -> dict[str, Any]:
    """A FeatureCollection in longitude/latitude (RFC 7946).

    `to_wgs84(xs, ys) -> (lons, lats)` maps the objects' CRS to WGS 84, e.g.
    `pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform` (always_xy: RFC
    7946 wants longitude first). None means the geometries already are longitude/latitude.
    Coordinates are snapped to LONLAT_GRID (validity kept) and outer rings run anticlockwise,
    as RFC 7946 asks.
    """
    objects = list(objects)
    geometries = np.array([obj.geometry for obj in objects], dtype=object)
    if to_wgs84 is not None and len(geometries):
        geometries = shapely.transform(geometries, to_wgs84, interleaved=False)
    geometries = shapely.set_precision(geometries, LONLAT_GRID)
    geometries = shapely.orient_polygons(geometries, exterior_cw=False)
    features = []
    for obj, geometry in zip(objects, geometries, strict=True):
        polygonal = _polygonal(geometry)
        if polygonal is not None:
            properties = object_properties(obj)
            features.append(
                {"type": "Feature", "geometry": mapping(polygonal), "properties": properties}
            )
    return {"type": "FeatureCollection", "features": features}


def objects_to_mvt(
    objects: Iterable[DetectedObject],
    tile_bounds: Bounds | Sequence[float],
    *,
    layer_name: str = "objects",
    extent: int = 4096,
    buffer: int = 64,
) -> bytes:
    """One MVT layer of the objects, which must already be in the tile's CRS (e.g. EPSG:3857).

    `tile_bounds` is (minx, miny, maxx, maxy) of the tile in that CRS. Geometries are clipped to
    the tile grown by `buffer` extent units on each side (as the MVT spec suggests, so outlines
    crossing tile edges join without seams) and quantised to `extent` units per tile side.
    A tile without objects is b"" (a valid, empty vector tile: no layers).

    The quantisation is what mapbox_vector_tile.encode does with quantize_bounds=tile_bounds
    (round(extent * (x - minx) / width), y up, flipped by the encoder), done here vectorised and
    snapped with GEOS so the integer geometry stays valid; the library's per-coordinate Python
    quantisation and winding pass took over half the time of a 200-object tile.
    """
    minx, miny, maxx, maxy = (float(v) for v in tile_bounds)
    bounds = (minx, miny, maxx, maxy)
    clip = _buffered_box(bounds, extent, buffer)
    kept = [(obj, g) for obj in objects if (g := _clipped(obj.geometry, clip)) is not None]
    if not kept:
        return b""
    grid = _quantised([g for _, g in kept], bounds, extent)
    features = []
    for (obj, _), geometry in zip(kept, grid, strict=True):
        polygonal = _polygonal(geometry)
        if polygonal is not None:
            features.append({"geometry": polygonal, "properties": object_properties(obj)})
    if not features:
        return b""
    options = {"extents": extent, "quantize_bounds": None, "check_winding_order": False}
    return mapbox_vector_tile.encode(
        [{"name": layer_name, "features": features}], default_options=options
    )


def _buffered_box(tile_bounds: Bounds, extent: int, buffer: int) -> Polygon:
    """The tile grown by `buffer` extent units, in CRS units."""
    minx, miny, maxx, maxy = tile_bounds
    pad_x = buffer * (maxx - minx) / extent
    pad_y = buffer * (maxy - miny) / extent
    return box(minx - pad_x, miny - pad_y, maxx + pad_x, maxy + pad_y)


def _clipped(geometry: BaseGeometry, clip: Polygon) -> BaseGeometry | None:
    """The polygonal part of `geometry` inside `clip`, None if nothing is left."""
    if clip.contains(geometry):
        return geometry
    if not clip.intersects(geometry):
        return None
    return _polygonal(geometry.intersection(clip))


def _quantised(geometries: list[BaseGeometry], tile_bounds: Bounds, extent: int) -> np.ndarray:
    """Geometries in integer tile units (y up, as the encoder expects), valid, outer rings
    clockwise there (anticlockwise once the encoder flips y: the MVT winding)."""
    minx, miny, maxx, maxy = tile_bounds
    origin = np.array([minx, miny])
    scale = np.array([extent / (maxx - minx), extent / (maxy - miny)])
    tile_units = shapely.transform(
        np.array(geometries, dtype=object), lambda xy: (xy - origin) * scale
    )
    snapped = shapely.set_precision(tile_units, 1.0)
    return shapely.orient_polygons(snapped, exterior_cw=True)


def _polygonal(geometry: BaseGeometry | None) -> Polygon | MultiPolygon | None:
    """Only the areas of a geometry (a clip or a snap may add lines and points, or empty it)."""
    if geometry is None or geometry.is_empty:
        return None
    if isinstance(geometry, Polygon | MultiPolygon):
        return geometry
    parts = [g for g in shapely.get_parts(geometry) if isinstance(g, Polygon | MultiPolygon)]
    polygons = [p for g in parts for p in shapely.get_parts(g) if not p.is_empty]
    if not polygons:
        return None
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)
