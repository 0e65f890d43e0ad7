"""Objects as GeoJSON (lon/lat, valid, RFC 7946 winding) and as Mapbox Vector Tiles."""

from __future__ import annotations

import mapbox_vector_tile
import morecantile
import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Polygon, box, shape

from inference.format import DetectorSpec
from inference.objects import DetectedObject, extract_objects
from inference.vector_tiles import objects_to_geojson, objects_to_mvt

UTM33N = "EPSG:32633"
TMS = morecantile.tms.get("WebMercatorQuad")
TILE = morecantile.Tile(x=8800, y=5670, z=14)  # central Europe


def utm_objects() -> list[DetectedObject]:
    """A crown and a building near 15°E (the 33N central meridian), 48.7°N."""
    crown = Polygon([(500000 + 3 * dx, 5395000 + 3 * dy) for dx, dy in _octagon()])
    building = box(500100.0, 5395050.0, 500120.0, 5395058.0)
    return [
        DetectedObject("tree", 0, 0.87654, crown, crown.area),
        DetectedObject("building", 1, 0.91234, building, building.area + 0.004321),
    ]


def _octagon() -> list[tuple[float, float]]:
    return [(1, 0), (0.7, 0.7), (0, 1), (-0.7, 0.7), (-1, 0), (-0.7, -0.7), (0, -1), (0.7, -0.7)]


def tile_objects() -> list[DetectedObject]:
    """In EPSG:3857: one inside the tile, one across its east edge, one well outside."""
    minx, miny, maxx, maxy = TMS.xy_bounds(TILE)
    width = maxx - minx
    inside = box(minx + 0.2 * width, miny + 0.2 * width, minx + 0.3 * width, miny + 0.3 * width)
    across = box(maxx - 0.1 * width, miny + 0.5 * width, maxx + 0.5 * width, miny + 0.6 * width)
    outside = box(maxx + 2 * width, miny, maxx + 3 * width, miny + width)
    return [
        DetectedObject("tree", 0, 0.5, inside, 100.0),
        DetectedObject("building", 1, 0.75, across, 2000.0),
        DetectedObject("building", 1, 0.9, outside, 3000.0),
    ]


def test_geojson_is_valid_lonlat_with_properties() -> None:
    to_wgs84 = Transformer.from_crs(UTM33N, "EPSG:4326", always_xy=True).transform
    objects = utm_objects()
    collection = objects_to_geojson(objects, to_wgs84)

    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == 2
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        geometry = shape(feature["geometry"])
        assert geometry.is_valid and geometry.geom_type == "Polygon"
        assert geometry.exterior.is_ccw  # RFC 7946: outer rings anticlockwise
        for lon, lat in geometry.exterior.coords:
            assert 14.99 < lon < 15.01 and 48.7 < lat < 48.72
    tree, building = (f["properties"] for f in collection["features"])
    assert tree == {"class": "tree", "score": 0.877, "area_m2": round(objects[0].area_m2, 2)}
    assert building == {"class": "building", "score": 0.912, "area_m2": 160.0}


def test_geojson_without_a_transform_keeps_coordinates() -> None:
    obj = DetectedObject("tree", 0, 0.6, box(15.0, 48.0, 15.001, 48.001), 80.0)
    (feature,) = objects_to_geojson([obj], None)["features"]
    assert shape(feature["geometry"]).equals(obj.geometry)


def test_empty_geojson() -> None:
    assert objects_to_geojson([], None) == {"type": "FeatureCollection", "features": []}


def test_mvt_layer_features_and_clipping() -> None:
    extent, buffer = 4096, 64
    bounds = tuple(TMS.xy_bounds(TILE))
    data = objects_to_mvt(tile_objects(), bounds, layer_name="trees", extent=extent, buffer=buffer)
    decoded = mapbox_vector_tile.decode(data)

    assert list(decoded) == ["trees"]
    layer = decoded["trees"]
    assert layer["extent"] == extent
    assert len(layer["features"]) == 2  # the one far outside is left out
    inside, across = layer["features"]
    assert inside["properties"] == {"class": "tree", "score": 0.5, "area_m2": 100.0}
    assert across["properties"] == {"class": "building", "score": 0.75, "area_m2": 2000.0}
    for feature in layer["features"]:
        assert feature["geometry"]["type"] == "Polygon"
        for x, y in feature["geometry"]["coordinates"][0]:
            assert -buffer <= x <= extent + buffer and -buffer <= y <= extent + buffer
    xs = [x for x, _ in across["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(0.9 * extent, abs=1)
    assert max(xs) == extent + buffer  # clipped to the buffered tile, not to the object
    inside_xs = sorted({x for x, _ in inside["geometry"]["coordinates"][0]})
    assert inside_xs == [pytest.approx(0.2 * extent, abs=1), pytest.approx(0.3 * extent, abs=1)]


def test_mvt_without_objects_is_an_empty_tile() -> None:
    bounds = tuple(TMS.xy_bounds(TILE))
    assert objects_to_mvt([], bounds) == b""
    assert objects_to_mvt(tile_objects()[2:], bounds) == b""  # all outside
    assert mapbox_vector_tile.decode(b"") == {}


def test_mvt_from_extracted_objects_round_trips_properties() -> None:
    """The encoders take what extract_objects makes."""
    minx, miny, maxx, maxy = TMS.xy_bounds(TILE)
    size = 256
    res = (maxx - minx) / size
    probs = np.zeros((2, size, size), dtype=np.float32)
    probs[0] = 1.0
    probs[:, 100:140, 60:90] = np.array([0.2, 0.8])[:, None, None]
    spec = DetectorSpec("Segmentor", ("building",), res, 256, 16)
    objects = extract_objects(probs, Affine(res, 0, minx, 0, -res, maxy), spec)
    decoded = mapbox_vector_tile.decode(objects_to_mvt(objects, (minx, miny, maxx, maxy)))
    (feature,) = decoded["objects"]["features"]
    assert feature["properties"]["class"] == "building"
    assert feature["properties"]["score"] == pytest.approx(0.8, abs=1e-3)
    xs = sorted({x for x, _ in feature["geometry"]["coordinates"][0]})
    assert xs == [60 * 16, 90 * 16]  # 4096 / 256 px
