"""Custom detectors through the API and the CLI: create, annotate, train on the in-process Dask
cluster with live progress, publish a version that serves at once, score accuracy areas; and
annotations that are wrong refused with the feature named and nothing stored."""

from __future__ import annotations

import json
import subprocess
import time

import morecantile
import onnx
import pytest
from fastapi.testclient import TestClient
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape

import trainer.prefill
from scenes.annotations import annotations_from_truth, label_count
from server.app import create_app
from server.settings import Settings
from tests.conftest import BIN, upload, write_scene_tif

TRAIN_STEPS = 25  # enough to exercise every stage; quality is the experiment framework's job


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 1024 px scene, four times as crowded as the demo's, so small areas hold many labels."""
    folder = tmp_path_factory.mktemp("train-scene")
    return write_scene_tif(folder / "scene.tif", 1024, seed=31, crowding=4)


def areas(image: dict) -> dict:
    """A training area (top-left), an accuracy area (bottom-right), a testing area (top-right)."""
    left, bottom, right, top = image["bounds"]
    w, h = right - left, top - bottom
    return {
        "training": [box(left, top - 0.55 * h, left + 0.55 * w, top)],
        "accuracy": [box(left + 0.6 * w, bottom, right, bottom + 0.4 * h)],
        "testing": [box(left + 0.6 * w, top - 0.3 * h, right, top)],
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory, scene):
    settings = Settings(data_dir=tmp_path_factory.mktemp("training") / "data")
    with TestClient(create_app(settings)) as client:
        image = upload(client, scene[0])
        truth = json.loads(scene[1].read_text())
        collection = annotations_from_truth(
            truth, image["crs"], image_id=image["id"], classes=["tree", "building"], **areas(image)
        )
        yield client, image, collection


COLORS = ["#0ea5e9", "#f97316"]


def create(client, classes=("tree", "building"), colors=None) -> dict:
    body = {"name": "trees", "classes": list(classes)}
    if colors:
        body["colors"] = colors
    response = client.post("/api/detectors", json=body)
    assert response.status_code == 201, response.text
    detector = response.json()
    assert detector["versions"] == [] and detector["classes"] == list(classes)
    assert len(detector["colors"]) == len(classes)
    return detector


def wait_for_job(client, job_id: str, timeout: float = 300) -> tuple[dict, list[dict]]:
    """The finished job, and every distinct running state seen on the way."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] == "running" and job["result"] and job["result"] not in seen:
            seen.append(job["result"])
        if job["status"] in ("succeeded", "failed"):
            return job, seen
        time.sleep(0.1)
    raise AssertionError(f"training {job_id} did not finish: {job}")


def test_train_publishes_a_scored_version_that_serves_at_once(served):
    client, image, collection = served
    detector = create(client, colors=COLORS)
    assert detector["colors"] == COLORS
    url = f"/api/detectors/{detector['id']}"
    saved = client.put(f"{url}/annotations", json=collection)
    assert saved.status_code == 200, saved.text
    assert saved.json()["revision"] == 1
    assert sum(saved.json()["counts"].values()) == label_count(collection) > 10
    stored = client.get(f"{url}/annotations").json()
    assert stored["features"] == collection["features"] and stored["revision"] == 1

    response = client.post(f"{url}/train", json={"steps": TRAIN_STEPS})
    assert response.status_code == 202, response.text
    job, seen = wait_for_job(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    # Progress was visible while it ran: step, loss and time left.
    assert seen and {"step", "loss", "seconds_left", "loss_curve"} <= set(seen[-1])
    assert job["result"]["version"] == 1
    metrics = job["result"]["metrics"]
    assert metrics["areas"] == 1 and metrics["labels"] > 0
    assert {"precision", "recall", "f1"} <= set(metrics["object"])
    assert {"counting_f1", "foreground_iou", "pixel_f1"} <= set(metrics)
    # Each accuracy area's own scores, named by its feature in the whole collection.
    (area,) = metrics["per_area"]
    roles = [f["properties"].get("role") for f in collection["features"]]
    assert area["area"] == roles.index("accuracy_area") and area["image_id"] == image["id"]
    assert area["labelled"] == metrics["labels"]
    assert (area["tp"], area["fp"], area["fn"]) == (
        metrics["object"]["tp"], metrics["object"]["fp"], metrics["object"]["fn"]
    )  # fmt: skip
    west, south, east, north = area["bounds_wgs84"]
    iw, is_, ie, in_ = image["bounds_wgs84"]
    assert iw - 1e-6 <= west < east <= ie + 1e-6 and is_ - 1e-6 <= south < north <= in_ + 1e-6
    assert job["result"]["report"]["steps"] == TRAIN_STEPS
    assert job["result"]["report"]["onnx_max_abs_diff"] < 1e-4

    versions = client.get(f"{url}/versions").json()
    assert [v["number"] for v in versions] == [1] and versions[0]["source"] == "train"
    assert versions[0]["metrics"] == metrics
    model = client.get(f"{url}/versions/1/model.onnx")
    props = {p.key: p.value for p in onnx.load_from_string(model.content).metadata_props}
    assert json.loads(props["model_type"]) == "Segmentor" and "tree" in props["class_names"]
    assert json.loads(props["tiledetect_colors"]) == COLORS  # the creator's colours travel
    report = client.get(f"{url}/versions/1/report.json").json()
    assert report["labels"] > 0 and report["train_seconds"] > 0
    predictions = client.get(f"{url}/versions/1/predictions.geojson").json()
    verdicts = {f["properties"]["verdict"] for f in predictions["features"]}
    assert verdicts <= {"true_positive", "false_positive", "missed", "prediction"}
    # The new version is the detection layer now.
    west, south, east, north = image["bounds_wgs84"]
    layer = f"{url}/images/{image['id']}/WebMercatorQuad/tilejson.json"
    tilejson = client.get(layer).json()
    tile = tilejson["tiles"][0].split("/tiles/")[1]
    assert tile.startswith("WebMercatorQuad/")
    # Trained on cores, it grows its objects back; its PNG overlay paints those objects.
    assert json.loads(props["tiledetect_expand_ratio"]) > 0
    z = tilejson["maxzoom"]
    at = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, z)
    png = client.get(tilejson["tiles"][0].format(z=z, x=at.x, y=at.y))
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), png.text[:200]
    check_prefill(client, image, collection, url)
    described = client.get(url).json()
    assert described["versions"][-1]["number"] == 1
    assert described["colors"] == described["spec"]["colors"] == COLORS
    assert described["execution_provider"] == "CPUExecutionProvider"


def test_wrong_annotations_are_refused_naming_the_feature(served):
    client, image, collection = served
    detector = create(client)
    url = f"/api/detectors/{detector['id']}/annotations"
    assert client.put(url, json=collection).status_code == 200
    features = collection["features"]
    label_index = next(i for i, f in enumerate(features) if "class" in f["properties"])
    area_index = next(i for i, f in enumerate(features) if f["properties"].get("role"))

    def changed(index: int, **props) -> dict:
        copy = json.loads(json.dumps(collection))
        copy["features"][index]["properties"].update(props)
        return copy

    far = json.loads(json.dumps(collection))
    far["features"][label_index]["geometry"]["coordinates"] = [
        [[x + 0.05, y] for x, y in ring]
        for ring in far["features"][label_index]["geometry"]["coordinates"]
    ]
    bowtie = json.loads(json.dumps(collection))
    west, south, east, north = image["bounds_wgs84"]
    bowtie["features"][area_index]["geometry"] = {
        "type": "Polygon",
        "coordinates": [
            [[west, south], [east, north], [east, south], [west, north], [west, south]]
        ],
    }
    cases = [
        (changed(label_index, **{"class": "truck"}), label_index, "truck"),
        (changed(area_index, role="lake"), area_index, "role"),
        (changed(label_index, image_id="nope"), label_index, "no image"),
        (far, label_index, ""),
        (bowtie, area_index, ""),
    ]
    for body, index, words in cases:
        response = client.put(url, json=body)
        assert response.status_code == 422, response.text
        assert f"feature {index}" in response.json()["detail"], response.text
        assert words in response.json()["detail"]
    assert client.get(url).json()["revision"] == 1  # nothing stored
    assert client.put(url, json={"type": "Feature"}).status_code == 422

    # Training needs labels and a training area: refused up front, no job created.
    empty = create(client)
    jobs_before = len(client.get("/api/jobs").json())
    response = client.post(f"/api/detectors/{empty['id']}/train", json={"steps": 5})
    assert response.status_code == 422 and "training area" in response.json()["detail"]
    areas_only = {
        "type": "FeatureCollection",
        "features": [f for f in collection["features"] if f["properties"].get("role")],
    }
    assert (
        client.put(f"/api/detectors/{empty['id']}/annotations", json=areas_only).status_code == 200
    )
    response = client.post(f"/api/detectors/{empty['id']}/train", json={"steps": 5})
    assert response.status_code == 422 and "no labels" in response.json()["detail"]
    assert len(client.get("/api/jobs").json()) == jobs_before
    assert client.post("/api/detectors", json={"name": "x", "classes": []}).status_code == 422
    detectors_before = client.get("/api/detectors").json()
    for colors, message in (
        (["#ff0000"], "colors has 1 entries for 2 classes"),
        (["#ff0000", "red"], "not 'red'"),
    ):
        body = {"name": "x", "classes": ["tree", "car"], "colors": colors}
        response = client.post("/api/detectors", json=body)
        assert response.status_code == 422 and message in response.json()["detail"]
    assert client.get("/api/detectors").json() == detectors_before
    assert client.get("/healthz").status_code == 200


def check_prefill(client, image: dict, collection: dict, url: str) -> None:
    """Predictions become labels: version 1's objects in the training area come back as label
    features that, saved with the annotations, count as `prefilled` and are ordinary labels."""
    features = collection["features"]
    (training,) = [f for f in features if f["properties"].get("role") == "training_area"]
    prefill = f"{url}/images/{image['id']}/prefill"
    response = client.post(prefill, json={"area": training["geometry"]})
    assert response.status_code == 200, response.text
    labels = response.json()["features"]
    assert labels, "version 1 found nothing in its own training area"
    area = transform_geom("EPSG:4326", image["crs"], training["geometry"])
    area = shape(area).buffer(1e-6)
    for label in labels:
        props = label["properties"]
        assert props["role"] == "label" and props["class"] in ("tree", "building")
        assert props["prefilled_from"] == 1 and props["image_id"] == image["id"]
        assert 0 <= props["score"] <= 1
        local = shape(transform_geom("EPSG:4326", image["crs"], label["geometry"]))
        assert area.contains(local.representative_point())
    revision = client.get(f"{url}/annotations").json()["revision"]
    body = {"type": "FeatureCollection", "features": [*features, *labels]}
    saved = client.put(f"{url}/annotations", json=body)
    assert saved.status_code == 200, saved.text
    assert saved.json()["prefilled"] == len(labels) and saved.json()["revision"] == revision + 1
    assert sum(saved.json()["counts"].values()) == label_count(collection) + len(labels)
    client.put(f"{url}/annotations", json=collection)  # back as it was
    # What cannot be done says why, and nothing changes.
    west, south, east, north = image["bounds_wgs84"]
    outside = mapping(box(east + 0.01, north + 0.01, east + 0.02, north + 0.02))
    for body, status, words in (
        ({"area": outside}, 422, "area: the area lies outside the image"),
        ({"area": training["geometry"], "version": 9}, 404, "no version 9"),
        ({"area": {"type": "Point", "coordinates": [west, south]}}, 422, "Polygon"),
    ):
        response = client.post(prefill, json=body)
        assert response.status_code == status, response.text
        assert words in response.json()["detail"], response.text
    limit = trainer.prefill.MAX_SIDE_PX
    trainer.prefill.MAX_SIDE_PX = 100  # a training area larger than pre-fill computes at once
    try:
        response = client.post(prefill, json={"area": training["geometry"]})
    finally:
        trainer.prefill.MAX_SIDE_PX = limit
    assert response.status_code == 422 and "at most 100 px a side" in response.json()["detail"]


def test_labels_not_used_whole_are_stored_with_warnings_naming_them(served):
    """A box drawn a little past a training area's edge, and a label drawn before its area:
    stored, each named in `warnings` with what will be done; the training still uses the first."""
    client, image, collection = served
    detector = create(client)
    url = f"/api/detectors/{detector['id']}/annotations"
    left, bottom, right, top = image["bounds"]
    w, h = right - left, top - bottom
    edge = top - 0.55 * h  # the training area's south edge
    straddling = box(left + 0.2 * w, edge - 0.03 * h, left + 0.23 * w, edge + 0.01 * h)
    nowhere = box(left + 0.05 * w, bottom + 0.05 * h, left + 0.08 * w, bottom + 0.08 * h)
    labels = [
        {
            "type": "Feature",
            "properties": {"class": "tree", "image_id": image["id"]},
            "geometry": transform_geom(image["crs"], "EPSG:4326", mapping(g)),
        }
        for g in (straddling, nowhere)
    ]
    assert len(labels) == 2
    body = {"type": "FeatureCollection", "features": [*collection["features"], *labels]}
    response = client.put(url, json=body)
    assert response.status_code == 200, response.text
    n = len(collection["features"])
    warnings = response.json()["warnings"]
    assert [(w["feature"], w["problem"]) for w in warnings] == [
        (n, "straddles_area"),
        (n + 1, "outside_areas"),
    ]
    assert warnings[0]["message"].startswith(f"feature {n}: label extends past the edge")
    assert "draw a training_area round it" in warnings[1]["message"]
    assert client.get(url).json()["features"] == json.loads(json.dumps(body["features"]))


def test_cli_train_then_detect(scene, tmp_path):
    from export.run import image_meta

    meta = image_meta(scene[0])
    image = {"bounds": meta["bounds"]}
    collection = annotations_from_truth(
        json.loads(scene[1].read_text()), meta["crs_wkt"], classes=["tree"], **areas(image)
    )
    annotations = tmp_path / "annotations.geojson"
    annotations.write_text(json.dumps(collection))
    out = tmp_path / "detector"
    trained = subprocess.run(
        [str(BIN / "tiledetect"), "train", str(scene[0]), "--annotations", str(annotations),
         "--out", str(out), "--steps", "15"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    report = json.loads((out / "report.json").read_text())
    # Labels of the training area only; the accuracy area's are for scoring.
    assert report["steps"] == 15 and 0 < report["labels"] < label_count(collection)
    assert report["classes"] == ["tree"]
    assert set(report["metrics"]["object"]) >= {"precision", "recall", "f1"}
    result = tmp_path / "objects.geojson"
    detected = subprocess.run(
        [str(BIN / "tiledetect"), "detect", str(out / "model.onnx"), str(scene[0]),
         "--out", str(result)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert detected.returncode == 0, detected.stderr
    objects = json.loads(result.read_text())
    assert objects["type"] == "FeatureCollection"
    assert all(f["properties"]["class"] == "tree" for f in objects["features"])
    # Bad annotations: a clear message, no model written.
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    refused = subprocess.run(
        [str(BIN / "tiledetect"), "train", str(scene[0]), "--annotations", str(bad),
         "--out", str(tmp_path / "nothing"), "--classes", "tree"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 1 and "no training_area" in refused.stderr
    assert not (tmp_path / "nothing").exists()
