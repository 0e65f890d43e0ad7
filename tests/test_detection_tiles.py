"""Detection layers: seamless native-resolution inference served as PNG, MVT and GeoJSON tiles,
cached in memory and on disk, computed once per window, bounded at low zoom."""

from __future__ import annotations

import asyncio
import json
from io import BytesIO

import mapbox_vector_tile
import morecantile
import numpy as np
import pytest
from fastapi.testclient import TestClient
from rasterio.io import MemoryFile
from shapely.geometry import box, shape

from inference.display import TileRequest, native_zoom, tile_bounds_in_image_crs, tile_mosaic
from inference.reading import read_region
from server.app import create_app
from server.settings import Settings
from tests.conftest import upload, write_dem_tif, write_scene_tif

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene_tif(tmp_path_factory.mktemp("scene") / "scene.tif", size=1536, seed=11)


@pytest.fixture(scope="module")
def app_settings(tmp_path_factory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("detection") / "data")


@pytest.fixture(scope="module")
def served(app_settings, scene, demo_onnx):
    """A client with the scene ingested and the demo detector imported through the API."""
    with TestClient(create_app(app_settings)) as client:
        image = upload(client, scene[0])
        with open(demo_onnx, "rb") as handle:
            response = client.post(
                "/api/detectors/import",
                files={"file": ("demo.onnx", handle)},
                params={"name": "demo"},
            )
        assert response.status_code == 201, response.text
        yield client, image, response.json()


def layer_url(detector, image) -> str:
    return f"/api/detectors/{detector['id']}/images/{image['id']}"


def centre_block(image: dict, zoom: int) -> list[morecantile.Tile]:
    """A 3x3 block of tiles around the image centre."""
    west, south, east, north = image["bounds_wgs84"]
    centre = WEB_MERCATOR.tile((west + east) / 2, (south + north) / 2, zoom)
    return [
        morecantile.Tile(centre.x + dx, centre.y + dy, zoom)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    ]


def services_of(client):
    return client.app.state.services


def decode_png(content: bytes) -> np.ndarray:
    with MemoryFile(BytesIO(content)) as memfile, memfile.open() as png:
        return png.read()


def test_detector_description_and_health(served):
    client, _image, detector = served
    assert detector["classes"] == ["tree", "building", "car"]
    assert detector["resolution_m"] == pytest.approx(0.3)
    assert detector["execution_provider"] == "CPUExecutionProvider"
    assert [v["number"] for v in detector["versions"]] == [1]
    assert client.get(f"/api/detectors/{detector['id']}").json()["id"] == detector["id"]
    assert [d["id"] for d in client.get("/api/detectors").json()] == [detector["id"]]
    health = client.get("/healthz").json()
    assert health["execution_providers"][0] == "CPUExecutionProvider"


def test_overlay_tile_shows_objects_in_class_colours(served):
    client, image, detector = served
    tms_zoom = image["maxzoom"]
    tile = centre_block(image, tms_zoom)[4]
    response = client.get(
        f"{layer_url(detector, image)}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
    )
    assert response.status_code == 200, response.text
    rgba = decode_png(response.content)
    assert rgba.shape == (4, 256, 256)
    shown = rgba[3] > 0
    assert 0.01 < shown.mean() < 0.9  # some objects, not everything
    colours = {
        tuple(int(v) for v in rgba[:3, r, c]) for r, c in zip(*np.nonzero(shown), strict=True)
    }
    palette = {(0x22, 0xC5, 0x5E), (0xEF, 0x44, 0x44), (0x3B, 0x82, 0xF6)}
    assert colours <= palette


def test_score_threshold_shows_fewer_objects_from_the_same_inference(served):
    client, image, detector = served
    tile = centre_block(image, image["maxzoom"])[4]
    base = f"{layer_url(detector, image)}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}"
    engine = services_of(client).engine
    default = client.get(base + ".geojson").json()["features"]
    computed = engine.windows_computed
    strict = client.get(base + ".geojson", params={"threshold": 0.95}).json()["features"]
    lenient = client.get(base + ".png", params={"threshold": 0.3})
    strict_png = client.get(base + ".png", params={"threshold": 0.95})
    assert engine.windows_computed == computed  # a threshold only re-renders cached windows

    # A higher threshold keeps less of each object (and may split clumps): less area in total.
    def area(features):
        return sum(f["properties"]["area_m2"] for f in features)

    assert strict and area(strict) < area(default)
    assert (decode_png(strict_png.content)[3] > 0).sum() < (
        decode_png(lenient.content)[3] > 0
    ).sum()
    assert client.get(base + ".png", params={"threshold": 1.5}).status_code == 422


def test_no_seams_across_a_block_of_display_tiles(served):
    """Nine display tiles' probabilities equal one inference over their union, borders included."""
    client, image, detector = served
    services = services_of(client)
    layer = services.layers.layer(detector["id"], image["id"])
    tiles = centre_block(image, image["maxzoom"])

    async def tile_mosaics():
        return [
            await tile_mosaic(services.engine, layer, TileRequest(WEB_MERCATOR, tile), 0)
            for tile in tiles
        ]

    mosaics = [m for m, _bounds in client.portal.call(tile_mosaics)]
    # One inference over the union of every window those tiles used, with the same context margin.
    left = min(m.transform.c for m in mosaics)
    top = max(m.transform.f for m in mosaics)
    right = max(m.transform.c + m.probabilities.shape[2] * m.transform.a for m in mosaics)
    bottom = min(m.transform.f + m.probabilities.shape[1] * m.transform.e for m in mosaics)
    pixel = layer.grid.pixel_size
    width, height = round((right - left) / pixel), round((top - bottom) / pixel)
    margin = layer.spec.overlap_px
    pixels = read_region(
        layer.cog_path,
        layer.crs,
        (
            left - margin * pixel,
            bottom - margin * pixel,
            right + margin * pixel,
            top + margin * pixel,
        ),
        (width + 2 * margin, height + 2 * margin),
        layer.spec,
        layer.image_gsd,
    )
    single = layer.detector.run(pixels[None])[0][:, margin:-margin, margin:-margin]
    assert single.shape[1:] == (height, width)
    for mosaic in mosaics:
        row = round((top - mosaic.transform.f) / pixel)
        col = round((mosaic.transform.c - left) / pixel)
        h, w = mosaic.probabilities.shape[1:]
        difference = np.abs(mosaic.probabilities - single[:, row : row + h, col : col + w])
        assert difference.max() < 1e-3, difference.max()


def test_objects_crossing_tile_borders_come_out_whole_and_once(served):
    client, image, detector = served
    tiles = centre_block(image, image["maxzoom"])
    features = []
    for tile in tiles:
        response = client.get(
            f"{layer_url(detector, image)}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.geojson"
        )
        assert response.status_code == 200
        collection = response.json()
        assert collection["type"] == "FeatureCollection"
        features += collection["features"]
    shapes = [shape(f["geometry"]) for f in features]
    assert all(s.is_valid for s in shapes)
    assert len(shapes) > 10
    # No object appears twice (each belongs to the tile holding its representative point) ...
    for i, a in enumerate(shapes):
        for b in shapes[i + 1 :]:
            assert a.intersection(b).area < 0.5 * min(a.area, b.area)
    # ... and objects on tile borders are not cut there.
    borders = [box(*WEB_MERCATOR.bounds(t)).boundary for t in tiles]
    crossing = [s for s in shapes if any(s.crosses(line) for line in borders)]
    assert crossing, "expected some objects across tile borders in a 3x3 block"
    for feature in features:
        assert feature["properties"]["class"] in ("tree", "building", "car")
        assert 0.5 <= feature["properties"]["score"] <= 1


def test_vector_tiles_decode(served):
    client, image, detector = served
    tile = centre_block(image, image["maxzoom"])[4]
    response = client.get(
        f"{layer_url(detector, image)}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.mvt"
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    decoded = mapbox_vector_tile.decode(response.content)
    features = decoded["objects"]["features"]
    assert features
    assert {f["properties"]["class"] for f in features} <= {"tree", "building", "car"}
    assert decoded["objects"]["extent"] == 4096


def test_tilejson_and_wmts(served):
    client, image, detector = served
    tilejson = client.get(f"{layer_url(detector, image)}/WebMercatorQuad/tilejson.json").json()
    services = services_of(client)
    layer = services.layers.layer(detector["id"], image["id"])
    latitude = sum(image["bounds_wgs84"][1::2]) / 2
    assert tilejson["maxzoom"] == native_zoom(layer, WEB_MERCATOR, latitude)
    assert tilejson["minzoom"] <= tilejson["maxzoom"]
    assert tilejson["tiles"][0].endswith(".png")
    mvt = client.get(
        f"{layer_url(detector, image)}/WebMercatorQuad/tilejson.json?format=mvt"
    ).json()
    assert mvt["vector_layers"][0]["id"] == "objects"

    service = client.get("/wmts/WMTSCapabilities.xml").text
    assert f"detections-{detector['id']}-{image['id']}" in service
    per_layer = client.get(f"{layer_url(detector, image)}/WMTSCapabilities.xml")
    assert per_layer.status_code == 200
    assert "/tiles/WebMercatorQuad/{TileMatrix}/{TileCol}/{TileRow}.png" in per_layer.text


def test_below_min_zoom_answers_empty_with_a_reason(served):
    client, image, detector = served
    tilejson = client.get(f"{layer_url(detector, image)}/WebMercatorQuad/tilejson.json").json()
    west, south, east, north = image["bounds_wgs84"]
    zoom = tilejson["minzoom"] - 2
    tile = WEB_MERCATOR.tile((west + east) / 2, (south + north) / 2, zoom)
    before = services_of(client).engine.windows_computed
    response = client.get(
        f"{layer_url(detector, image)}/tiles/WebMercatorQuad/{zoom}/{tile.x}/{tile.y}.png"
    )
    assert response.status_code == 200
    assert "zoom in" in response.headers["x-tiledetect-empty"]
    assert int(response.headers["x-tiledetect-minzoom"]) == tilejson["minzoom"]
    assert (decode_png(response.content)[3] == 0).all()
    assert services_of(client).engine.windows_computed == before  # no inference was run
    geojson = client.get(
        f"{layer_url(detector, image)}/tiles/WebMercatorQuad/{zoom}/{tile.x}/{tile.y}.geojson"
    )
    assert geojson.json()["features"] == []


def test_cache_hits_and_single_flight(served):
    client, image, detector = served
    services = services_of(client)
    layer = services.layers.layer(detector["id"], image["id"])
    engine = services.engine
    tile = centre_block(image, image["maxzoom"] + 1)[0]
    bounds = tile_bounds_in_image_crs(layer, TileRequest(WEB_MERCATOR, tile))
    windows = layer.grid.windows_for(bounds)
    engine.cache._memory.clear()
    for index in windows:  # make them cold on disk too
        path = (
            engine.cache.directory / f"{layer.version_id}/{image['id']}/{index.row}_{index.col}.npy"
        )
        path.unlink(missing_ok=True)
    batcher = engine.batcher(layer)
    calls_before, computed_before = batcher.windows, engine.windows_computed

    async def eight_identical():
        return await asyncio.gather(*(engine.mosaic(layer, bounds) for _ in range(8)))

    results = client.portal.call(eight_identical)
    assert batcher.windows - calls_before == len(windows)  # one inference per window, not eight
    assert engine.windows_computed - computed_before == len(windows)
    assert all(np.array_equal(r.probabilities, results[0].probabilities) for r in results)

    hits = dict(engine.cache.hits)
    client.portal.call(engine.mosaic, layer, bounds)
    assert engine.cache.hits["memory"] == hits["memory"] + len(windows)
    assert batcher.windows - calls_before == len(windows)


def test_disk_cache_survives_a_restart(served, app_settings):
    client, image, detector = served
    tile = centre_block(image, image["maxzoom"])[4]
    url = f"{layer_url(detector, image)}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
    first = client.get(url).content
    with TestClient(create_app(app_settings)) as restarted:
        again = restarted.get(url)
        engine = services_of(restarted).engine
        assert engine.windows_computed == 0  # everything came from disk
        assert engine.cache.hits["disk"] > 0
        assert again.content == first


def test_new_version_never_serves_the_old_cache(served, demo_onnx):
    client, image, detector = served
    services = services_of(client)
    spec = services.layers.layer(detector["id"], image["id"]).spec
    services.detectors.add_version(detector["id"], demo_onnx, spec, source="retrained")
    tile = centre_block(image, image["maxzoom"])[4]
    url = f"{layer_url(detector, image)}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
    services.layers.forget([])  # what the API does when it adds a version (others: TTL 5 s)
    before = services.engine.windows_computed
    latest = client.get(url)
    assert services.engine.windows_computed > before  # computed afresh for version 2
    assert (
        latest.headers["x-tiledetect-version"]
        != client.get(url + "?version=1").headers["x-tiledetect-version"]
    )


def test_bad_detector_files_are_refused_and_nothing_stored(served, tmp_path):
    client, _image, _detector = served
    before = client.get("/api/detectors").json()
    not_onnx = client.post("/api/detectors/import", files={"file": ("x.onnx", b"hello")})
    assert not_onnx.status_code == 422
    assert "not a loadable ONNX model" in not_onnx.json()["detail"]

    import onnx
    import torch

    from inference.format import spec_to_metadata

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Softmax(dim=1))
    path = tmp_path / "no-metadata.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 32, 32), path, dynamo=False)
    missing = client.post("/api/detectors/import", files={"file": ("m.onnx", path.read_bytes())})
    assert missing.status_code == 422
    assert (
        "lacks required metadata: model_type, class_names, resolution" in missing.json()["detail"]
    )

    model = onnx.load(path)
    spec = services_of(client).layers.layer(_detector["id"], _image["id"]).spec
    metadata = spec_to_metadata(spec) | {
        "class_names": json.dumps({"0": "background", "1": "tree"})
    }
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    mismatch = client.post("/api/detectors/import", files={"file": ("c.onnx", path.read_bytes())})
    assert mismatch.status_code == 422
    assert "returns 4 channels but class_names has 2" in mismatch.json()["detail"]

    assert client.get("/api/detectors").json() == before
    assert not list(services_of(client).settings.upload_dir.glob("*.upload"))


def test_image_whose_bands_do_not_fit(served, tmp_path):
    client, _image, detector = served
    dem = upload(client, write_dem_tif(tmp_path / "dem.tif"))
    response = client.get(f"{layer_url(detector, dem)}/tiles/WebMercatorQuad/18/140000/90000.png")
    assert response.status_code == 422
    assert "has 1 band(s)" in response.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_unknown_detector_or_image(served):
    client, image, detector = served
    assert (
        client.get(
            f"/api/detectors/nope/images/{image['id']}/tiles/WebMercatorQuad/18/1/1.png"
        ).status_code
        == 404
    )
    assert (
        client.get(
            f"/api/detectors/{detector['id']}/images/nope/tiles/WebMercatorQuad/18/1/1.png"
        ).status_code
        == 404
    )
