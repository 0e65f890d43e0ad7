"""The synthetic scene: deterministic, well-formed, and its pixels match its ground truth."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import geometry_mask
from shapely.geometry import shape

from scenes.synthetic import CLASSES, SceneSpec, SceneSummary, plan_scene, write_scene

SPEC = SceneSpec(width=1024, height=1024, seed=7, block=256)


def _write(spec: SceneSpec, folder: Path) -> tuple[Path, Path, SceneSummary]:
    folder.mkdir(parents=True, exist_ok=True)
    tif, geojson = folder / "scene.tif", folder / "truth.geojson"
    return tif, geojson, write_scene(spec, tif, geojson)


def _pixels(tif: Path) -> np.ndarray:
    with rasterio.open(tif) as src:
        return src.read()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, SceneSummary]:
    return _write(SPEC, tmp_path_factory.mktemp("scene"))


def test_same_seed_gives_identical_files_and_another_seed_does_not(scene, tmp_path):
    tif, geojson, _ = scene
    again_tif, again_geojson, _ = _write(SPEC, tmp_path / "again")
    assert np.array_equal(_pixels(tif), _pixels(again_tif))
    assert geojson.read_text() == again_geojson.read_text()

    other = SceneSpec(width=SPEC.width, height=SPEC.height, seed=SPEC.seed + 1, block=SPEC.block)
    other_tif, other_geojson, _ = _write(other, tmp_path / "other")
    assert not np.array_equal(_pixels(tif), _pixels(other_tif))
    assert geojson.read_text() != other_geojson.read_text()


def test_plan_is_pure():
    first, second = plan_scene(SPEC), plan_scene(SPEC)
    assert [(o.id, o.cls, o.polygon.wkb) for o in first] == [
        (o.id, o.cls, o.polygon.wkb) for o in second
    ]


def test_geotiff_is_tiled_georeferenced_rgb(scene):
    tif, _, summary = scene
    with rasterio.open(tif) as src:
        assert (src.count, src.width, src.height) == (3, SPEC.width, SPEC.height)
        assert src.dtypes == ("uint8",) * 3
        assert src.profile["tiled"]
        assert src.block_shapes == [(SPEC.block, SPEC.block)] * 3
        assert src.crs.to_epsg() == 32633
        assert src.transform.almost_equals(SPEC.transform)
        assert src.transform.c == SPEC.origin[0] and src.transform.f == SPEC.origin[1]
        assert src.transform.a == SPEC.gsd and src.transform.e == -SPEC.gsd
        assert src.compression is not None
        assert src.colorinterp[0].name == "red"
        assert summary.bounds == pytest.approx(tuple(src.bounds))
    assert not list(tif.parent.glob(".*.part")), "temporary files must not be left behind"


def test_geojson_is_a_valid_feature_collection_in_lonlat(scene):
    _, geojson, summary = scene
    collection = json.loads(geojson.read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    west, south, east, north = summary.lonlat_bounds
    area = shapely.box(west, south, east, north)
    ids = [f["properties"]["id"] for f in features]
    assert len(set(ids)) == len(ids)
    for feature in features:
        assert feature["geometry"]["type"] == "Polygon"
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and polygon.exterior.is_ccw
        assert area.contains(polygon)
        assert feature["properties"]["class"] in CLASSES
    classes = [f["properties"]["class"] for f in features]
    assert summary.counts == {cls: classes.count(cls) for cls in CLASSES}
    assert all(summary.counts[cls] > 0 for cls in CLASSES)


@pytest.mark.parametrize("seed", range(5))
def test_small_scenes_keep_every_class(seed):
    objects = plan_scene(SceneSpec(width=1024, height=1024, seed=seed))
    assert {o.cls for o in objects} == set(CLASSES)


def test_objects_do_not_collide_but_trees_touch():
    objects = plan_scene(SPEC)
    solid = [o.polygon for o in objects if o.cls != "tree"]
    tree_polygons = [o.polygon for o in objects if o.cls == "tree"]
    for group in (solid, tree_polygons):
        assert all(p.is_valid for p in group)
    index = shapely.STRtree(solid)
    pairs = index.query(solid, predicate="intersects")
    assert (pairs[0] == pairs[1]).all(), "buildings and cars never overlap each other"
    trees = shapely.STRtree(tree_polygons)
    left, right = trees.query(tree_polygons, predicate="dwithin", distance=0.3)
    assert (left != right).sum() >= 4, "some crowns must touch, as in real groves"
    assert not shapely.STRtree(solid).query(tree_polygons, predicate="intersects").size


def _mean_colour(pixels: np.ndarray, polygons: list) -> np.ndarray:
    inside = ~geometry_mask(polygons, pixels.shape[1:], SPEC.transform)
    return pixels[:, inside].mean(axis=1)


def test_pixels_agree_with_the_truth(scene):
    tif, _, _ = scene
    pixels = _pixels(tif).astype(float)
    objects = plan_scene(SPEC)
    by_class = {cls: [o.polygon for o in objects if o.cls == cls] for cls in CLASSES}

    def greenness(colour: np.ndarray) -> float:
        return colour[1] - (colour[0] + colour[2]) / 2

    tree_colour = _mean_colour(pixels, by_class["tree"])
    assert greenness(tree_colour) > greenness(_mean_colour(pixels, by_class["building"])) + 10
    assert greenness(tree_colour) > greenness(_mean_colour(pixels, by_class["car"])) + 10

    for cls in ("building", "car"):
        distinct = 0
        for polygon in by_class[cls]:
            ring = polygon.buffer(1.5).difference(polygon.buffer(0.45))
            contrast = np.abs(_mean_colour(pixels, [polygon]) - _mean_colour(pixels, [ring]))
            distinct += contrast.max() > 12
        assert distinct >= 0.75 * len(by_class[cls]), cls


def test_progress_rises_to_one(tmp_path):
    seen: list[float] = []
    write_scene(SPEC, tmp_path / "scene.tif", tmp_path / "truth.geojson", progress=seen.append)
    assert len(seen) == SPEC.height // SPEC.block
    assert seen == sorted(seen) and all(0 < f <= 1 for f in seen)
    assert seen[-1] == 1.0


def test_density_scales_with_area():
    small = plan_scene(SceneSpec(width=1024, height=1024, seed=1))
    large = plan_scene(SceneSpec(width=2048, height=2048, seed=1))
    for cls in CLASSES:
        assert sum(o.cls == cls for o in large) > sum(o.cls == cls for o in small)
