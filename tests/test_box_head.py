"""A box-regression detector (TrainConfig(box_head=True), box labels): trained through
`train_detector`, exported with a second ONNX output of box distances that onnxruntime and torch
agree on, seamless across windows like every detector, and only where the labels are boxes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box

from export.run import image_meta
from inference.objects import extract_objects
from inference.region import infer_region, snapped_request
from inference.session import load_detector
from scenes.annotations import annotations_from_truth
from tests.conftest import write_scene_tif
from trainer.annotations import parse_annotations
from trainer.data import ImageSource
from trainer.loop import TrainConfig
from trainer.train import TrainingRequest, train_detector

BOX_HEAD = TrainConfig()  # the default: a box head wherever the labels are boxes


def train(folder, *, as_boxes: bool, steps: int):
    tif, truth = write_scene_tif(folder / "scene.tif", 768, seed=5, crowding=2)
    meta = image_meta(tif)
    left, bottom, right, top = meta["bounds"]
    middle = (bottom + top) / 2
    collection = annotations_from_truth(
        json.loads(truth.read_text()),
        meta["crs_wkt"],
        training=[box(left, middle, right, top)],
        accuracy=[box(left, bottom, right, middle)],
        classes=["tree"],
        as_boxes=as_boxes,
    )
    parsed = parse_annotations(
        collection,
        classes=("tree",),
        image_crs_wkt=meta["crs_wkt"],
        image_bounds=tuple(meta["bounds"]),
    )
    source = ImageSource("scene", str(tif), meta)
    request = TrainingRequest(
        name="boxes",
        class_names=("tree",),
        images={"scene": source},
        annotations={"scene": parsed},
        steps=steps,
        config=BOX_HEAD,
    )
    report = train_detector(request, folder / "run")
    return report, folder / "run" / "model.onnx", source


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(tmp_path_factory.mktemp("box-head"), as_boxes=True, steps=20)


def test_the_detector_returns_boxes_as_a_second_output(trained):
    report, model, _ = trained
    detector = load_detector(model)
    assert detector.spec.box_regression and detector.spec.output_shape == "box"
    assert [o.name for o in detector.session.get_outputs()] == ["probabilities", "boxes"]
    assert report["onnx_max_abs_diff"] < 1e-4
    out = detector.run(np.zeros((1, 3, 64, 96), np.float32))
    assert out.shape == (1, 2 + 4, 64, 96)  # background, tree, then top/left/bottom/right
    np.testing.assert_allclose(out[0, :2].sum(axis=0), 1.0, atol=1e-5)
    assert (out[0, 2:] > 0).all()
    assert report["metrics"]["labels"] > 0


def test_windows_give_the_same_boxes_as_one_pass(trained):
    """Tiles infer window by window (one core each), exports in big chunks: the probabilities,
    the box distances and the objects must be the same (the context margin covers the head)."""
    _, model, source = trained
    detector = load_detector(model)
    spec = detector.spec
    left, bottom, right, top = source.meta["bounds"]
    pixel = spec.resolution_m * source.meta["resolution"][0] / source.meta["gsd"]
    request = snapped_request(source.cog_path, source.meta, (left, bottom, right, top), pixel)
    assert request.width > spec.core_size  # several windows across
    chunked, transform, _ = infer_region(request, detector)
    detector.spec = dataclasses.replace(spec, region_chunk_px=0)
    windowed, _, _ = infer_region(request, detector)
    assert chunked.shape[0] == 6
    np.testing.assert_allclose(windowed[:2], chunked[:2], atol=1e-4)
    np.testing.assert_allclose(windowed[2:], chunked[2:], rtol=1e-3, atol=1e-3)
    a = extract_objects(chunked, transform, spec)
    b = extract_objects(windowed, transform, spec)
    assert len(a) == len(b) > 0
    for one, other in zip(a, b, strict=True):
        assert one.geometry.equals_exact(other.geometry, 1e-2 * pixel)


def test_outline_labels_keep_an_outline_detector(tmp_path):
    """The box head is for box labels: with outlines the detector stays a polygon one."""
    _, model, _ = train(tmp_path, as_boxes=False, steps=2)
    detector = load_detector(model)
    assert not detector.spec.box_regression and detector.spec.output_shape == "polygon"
    assert [o.name for o in detector.session.get_outputs()] == ["probabilities"]


def test_served_tiles_give_each_box_once(trained, tmp_path):
    """Imported into the server, the detector's GeoJSON tiles hold its boxes, each in one tile,
    and its PNG and MVT tiles render."""
    import morecantile
    from fastapi.testclient import TestClient
    from shapely.geometry import shape

    from server.app import create_app
    from server.settings import Settings
    from tests.conftest import upload

    _, model, source = trained
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as client:
        image = upload(client, Path(source.cog_path))
        with open(model, "rb") as handle:
            response = client.post(
                "/api/detectors/import", files={"file": ("boxes.onnx", handle)},
                params={"name": "boxes"},
            )  # fmt: skip
        assert response.status_code == 201, response.text
        detector = response.json()
        url = f"/api/detectors/{detector['id']}/images/{image['id']}/tiles/WebMercatorQuad"
        tms = morecantile.tms.get("WebMercatorQuad")
        west, south, east, north = image["bounds_wgs84"]
        zoom = image["maxzoom"]
        tiles = list(tms.tiles(west, south, east, north, [zoom]))
        features = []
        for tile in tiles:
            response = client.get(f"{url}/{tile.z}/{tile.x}/{tile.y}.geojson")
            assert response.status_code == 200, response.text
            features += response.json()["features"]
        assert features
        shapes = [shape(f["geometry"]) for f in features]
        for one in shapes:
            assert len(one.exterior.coords) == 5  # a box
        for i, a in enumerate(shapes):
            for b in shapes[i + 1 :]:
                assert not a.equals_exact(b, 1e-9)
        middle = tiles[len(tiles) // 2]
        for fmt in ("png", "mvt"):
            response = client.get(f"{url}/{middle.z}/{middle.x}/{middle.y}.{fmt}")
            assert response.status_code == 200 and response.content
