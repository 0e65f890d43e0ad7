"""Where to label next: after a training, training-area-sized places ranked by what labels there
would teach, each with its reason; never on an accuracy area, never where training already is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_geom
from shapely.geometry import box, shape

from export.run import image_meta
from scenes.annotations import annotations_from_truth
from tests.conftest import write_scene_tif
from trainer.annotations import parse_annotations
from trainer.data import ImageSource
from trainer.suggestions import SIGNALS
from trainer.train import TrainingRequest, train_detector


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1024 px scene whose bottom-left third is painted over with violet noise (imagery
    unlike anything trained on), a detector trained on its top-left third."""
    folder = tmp_path_factory.mktemp("suggestions")
    tif, truth = write_scene_tif(folder / "scene.tif", 1024, seed=8, crowding=2)
    with rasterio.open(tif, "r+") as dataset:
        third = dataset.height // 3
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 60, (3, dataset.height - 2 * third, third), dtype=np.uint8)
        noise[0] += 150
        noise[2] += 170
        dataset.write(noise, window=((2 * third, dataset.height), (0, third)))
    meta = image_meta(tif)
    left, bottom, right, top = meta["bounds"]
    w, h = (right - left) / 3, (top - bottom) / 3
    odd = box(left, bottom, left + w, bottom + h)
    collection = annotations_from_truth(
        json.loads(truth.read_text()),
        meta["crs_wkt"],
        training=[box(left, top - h, left + w, top)],
        accuracy=[box(right - w, bottom, right, bottom + h)],
        classes=["tree", "building"],
    )
    parsed = parse_annotations(
        collection,
        classes=("tree", "building"),
        image_crs_wkt=meta["crs_wkt"],
        image_bounds=tuple(meta["bounds"]),
    )
    request = TrainingRequest(
        name="suggest",
        class_names=("tree", "building"),
        images={"scene": ImageSource("scene", str(tif), meta)},
        annotations={"scene": parsed},
        steps=30,
    )
    report = train_detector(request, folder / "run")
    suggestions = json.loads((folder / "run" / "suggestions.geojson").read_text())
    return report, suggestions, parsed, meta, odd


def local(feature: dict, meta: dict):
    return shape(transform_geom("EPSG:4326", meta["crs_wkt"], feature["geometry"]))


def test_suggestions_are_ranked_places_with_reasons(trained):
    report, suggestions, parsed, meta, _ = trained
    features = suggestions["features"]
    # A 3 x 3 grid of training-area-sized squares, minus the trained and the scored one.
    assert report["suggestions"]["candidates"] == suggestions["summary"]["candidates"] == 7
    assert len(features) == 7
    assert [f["properties"]["rank"] for f in features] == list(range(1, 8))
    scores = [f["properties"]["score"] for f in features]
    assert scores == sorted(scores, reverse=True)
    (training,), (accuracy,) = parsed.training, parsed.accuracy
    for feature in features:
        props = feature["properties"]
        assert props["image_id"] == "scene" and props["signal"] in SIGNALS
        assert set(props["signals"]) == set(SIGNALS) and props["reason"]
        place = local(feature, meta)
        assert place.intersection(accuracy.geometry).area < 1e-6 * place.area
        assert place.intersection(training.geometry).area <= 0.1 * place.area
        assert place.area == pytest.approx(training.geometry.area, rel=0.01)


def test_imagery_unlike_every_training_area_is_suggested_for_that(trained):
    _, suggestions, _, meta, odd = trained
    features = suggestions["features"]
    strangest = max(features, key=lambda f: f["properties"]["signals"]["unfamiliar"])
    assert local(strangest, meta).intersection(odd).area > 0.9 * odd.area
    assert strangest["properties"]["rank"] <= 3
    assert strangest["properties"]["signal"] == "unfamiliar"
    assert "looks unlike every training area" in strangest["properties"]["reason"]
