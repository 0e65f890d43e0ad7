"""The hostile-input corpus (tests/hostile_corpus.py) through the HTTP API and the CLI.

Each case: a 4xx whose `detail` says what is wrong, nothing stored (no record, no file in the
blob store or the uploads dir), and the server still serving. tests/test_bad_input.py holds the
first cases (not a raster, strip-truncated, no georeference, complex dtype, 40 bands, PNG, size
limit, filenames with path components, unknown ids); these are the ones that needed more than
a header to build, or that a fuzzer would not find.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from server.app import create_app
from server.settings import Settings
from tests import hostile_corpus as corpus
from tests.conftest import run_cli, upload, write_rgb_tif
from tests.test_bad_input import assert_nothing_stored, assert_still_serving, post_file

pytestmark = pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning")

# Header checks answer at once; reading what these files declare would take hours or all memory.
CHEAP_S = 20.0


def stored_files(settings: Settings) -> list[Path]:
    return [
        p
        for root in (settings.blob_dir, settings.upload_dir)
        if root.exists()
        for p in root.rglob("*")
        if p.is_file()
    ]


# --- files ----------------------------------------------------------------------------------------

BAD_UPLOADS = {
    "header cut short": (corpus.truncated_header, 422, ["truncated or corrupt"]),
    "tiles cut off": (corpus.truncated_tiles, 422, ["truncated or corrupt", "TIFFFillTile"]),
    "3000 bands": (corpus.thousands_of_bands, 422, ["3000 bands", "at most 32"]),
    "10^6 x 10^6 sparse": (corpus.huge_sparse, 422, ["1000000x1000000 px", "per side"]),
    "1.6e11 pixels, sparse": (
        corpus.sparse_within_side_limit,
        422,
        ["400000x400000 px", "at most 2.5e+10 pixels"],
    ),
    "40 GB bomb": (corpus.decompression_bomb, 422, ["200000x200000 px"]),
    "10 GB bomb in 80 kB": (
        lambda folder: corpus.decompression_bomb(folder, side=100_000),
        422,
        ["10.0 GB of pixels", "decompression bomb"],
    ),
    "one 1 GB block": (
        lambda folder: corpus.huge_sparse(folder, side=32768, tile=32768),
        422,
        ["32768x32768 px blocks", "rewrite it tiled"],
    ),
    "not a raster": (corpus.not_a_raster, 422, ["not a raster file GDAL can read"]),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_files_are_refused_from_the_header(client, settings, tmp_path, rgb_tif, case):
    make, status, words = BAD_UPLOADS[case]
    path = make(tmp_path)
    started = time.monotonic()
    response = post_file(client, path.read_bytes(), filename=path.name)
    assert time.monotonic() - started < CHEAP_S
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail
    assert str(settings.data_dir) not in detail and ".upload" not in detail  # no server paths
    assert_nothing_stored(client, settings)
    assert_still_serving(client, rgb_tif)


def test_cli_ingest_refuses_a_bomb_and_stores_nothing(tmp_path):
    data = tmp_path / "data"
    bomb = corpus.decompression_bomb(tmp_path, side=100_000)
    result = run_cli("ingest", str(bomb), data_dir=data, timeout=120)
    assert result.returncode != 0
    assert "decompression bomb" in result.stdout + result.stderr
    listed = run_cli("images", "list", "--json", data_dir=data)
    assert listed.returncode == 0 and listed.stdout.strip() == ""  # JSON lines: none
    assert not [p for p in (data / "blobs").rglob("*") if p.is_file()]


def test_a_cog_with_broken_overviews_is_rebuilt_from_full_resolution(client, tmp_path):
    """Ingest never trusts a source's overviews: the COG's are computed from the full
    resolution, so junk in the upload's overview tiles cannot reach the zoomed-out tiles."""
    broken = corpus.broken_overviews(tmp_path)
    intact = write_rgb_tif(tmp_path / "intact.tif", width=2048, height=2048, compress="deflate")
    previews = []
    for path in (broken, intact):
        image = upload(client, path)
        assert image["overviews"], image
        response = client.get(f"/api/images/{image['id']}/preview.png?max_size=256")
        assert response.status_code == 200
        previews.append(np.asarray(Image.open(io.BytesIO(response.content))).astype(int))
    assert np.abs(previews[0] - previews[1]).mean() < 1.0


def test_a_stored_cog_corrupted_later_answers_a_clear_error(client, settings, tmp_path):
    """Blocks of a catalogue COG broken on disk after ingest: the tile says the stored image
    cannot be read (a server-side fault, so 5xx), names the image, and the server goes on."""
    image = upload(client, write_rgb_tif(tmp_path / "rgb.tif", width=2048, height=2048))
    cog = next(settings.blob_dir.rglob(f"{image['id']}.tif"))
    for offset, length in corpus.overview_tile_extents(cog):
        with open(cog, "r+b") as handle:
            handle.seek(offset)
            handle.write(b"\xff" * length)
    response = client.get(f"/api/images/{image['id']}/preview.png?max_size=128")
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert "cannot be read" in detail and image["id"] in detail
    assert str(settings.data_dir) not in detail
    assert client.get("/healthz").status_code == 200


# --- floating-point specials ----------------------------------------------------------------------


def bbox_png(client, image: dict) -> np.ndarray:
    west, south, east, north = image["bounds"]
    params = image["tile_params"] or ""
    url = f"/api/images/{image['id']}/bbox/{west},{south},{east},{north}/512x512.png"
    response = client.get(f"{url}?coord_crs={image['crs']}&{params}")
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_nan_pixels_are_nodata(client, tmp_path):
    image = upload(client, corpus.float_image(tmp_path, "nan"))
    assert image["mask"] == "nodata"
    stats = image["statistics"]["b1"]
    assert stats["valid_percent"] == pytest.approx(100 * (1 - 1 / 16))
    assert all(math.isfinite(stats[k]) for k in ("min", "max", "mean", "percentile_98"))
    pixels = bbox_png(client, image)
    assert (pixels[:128, :128, -1] == 0).all()  # NaN: transparent
    assert (pixels[200:300, 200:300, -1] == 255).all()
    statistics = client.get(f"/api/images/{image['id']}/statistics").json()["b1"]
    assert math.isfinite(statistics["mean"])


def test_infinite_pixels_are_left_out_of_statistics_and_drawn_at_the_ends(client, tmp_path):
    image = upload(client, corpus.float_image(tmp_path, "inf"))
    stats = image["statistics"]["b1"]
    assert stats["valid_percent"] < 100  # +/-inf are not counted
    assert all(math.isfinite(stats[k]) for k in ("min", "max", "mean", "std"))
    low, high = (float(v) for v in image["tile_params"].removeprefix("rescale=").split(","))
    assert 100 <= low < high <= 1122  # the finite ramp
    pixels = bbox_png(client, image)
    assert (pixels[:128, :128, 0] == 255).all() and (pixels[-64:, -64:, 0] == 0).all()
    for url in ("statistics", "info", "WebMercatorQuad/tilejson.json", "preview.png"):
        assert client.get(f"/api/images/{image['id']}/{url}").status_code == 200, url


def test_an_image_of_nan_only_is_served_empty(client, tmp_path):
    image = upload(client, corpus.float_image(tmp_path, "all-nan"))
    stats = image["statistics"]["b1"]
    assert stats["valid_percent"] == 0 and stats["mean"] is None
    assert not image["tile_params"]
    assert (bbox_png(client, image)[..., -1] == 0).all()


# --- detectors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [corpus.not_onnx, corpus.truncated_detector], ids=["png", "cut"])
def test_detector_files_that_are_not_onnx(client, settings, tmp_path, make):
    path = make(tmp_path)
    response = client.post("/api/detectors/import", files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "not a loadable ONNX model" in detail
    assert str(settings.data_dir) not in detail and ".upload" not in detail
    assert client.get("/api/detectors").json() == []
    assert stored_files(settings) == []
    good = corpus.tiny_detector(tmp_path / "tiny.onnx")
    again = client.post("/api/detectors/import", files={"file": ("tiny.onnx", good.read_bytes())})
    assert again.status_code == 201


# --- request bodies -------------------------------------------------------------------------------

LIMIT = 64 * 1024


@pytest.fixture
def small_json_limit(tmp_path):
    settings = Settings(data_dir=tmp_path / "limited", max_json_bytes=LIMIT)
    with TestClient(create_app(settings)) as client:
        detector = client.post("/api/detectors", json={"name": "d", "classes": ["tree"]}).json()
        yield client, detector["id"]


def body_targets(detector_id: str) -> list[tuple[str, str]]:
    return [
        ("PUT", f"/api/detectors/{detector_id}/annotations"),
        ("POST", f"/api/detectors/{detector_id}/train"),
        ("POST", f"/api/detectors/{detector_id}/images/any/exports"),
        ("POST", "/api/detectors"),
    ]


def test_json_bodies_over_the_limit(small_json_limit):
    client, detector_id = small_json_limit
    padding = b" " * (LIMIT + 1)
    for method, url in body_targets(detector_id):
        for body in (b'{"a": 1' + padding + b"}", iter([padding[:LIMIT], padding[:LIMIT]])):
            headers = {"content-type": "application/json"}
            response = client.request(method, url, content=body, headers=headers)
            assert response.status_code == 413, (url, response.text)
            assert f"larger than the limit of {LIMIT} bytes" in response.json()["detail"]
    assert client.get(f"/api/detectors/{detector_id}/annotations").json()["features"] == []
    assert client.get("/api/jobs").json() == [] and client.get("/api/exports").json() == []
    assert client.get("/healthz").status_code == 200


def test_bodies_that_are_not_json(small_json_limit):
    client, detector_id = small_json_limit
    for method, url in body_targets(detector_id):
        form = client.request(method, url, data={"format": "geojson"})
        assert form.status_code == 415, (url, form.text)
        assert "as JSON (Content-Type: application/json)" in form.json()["detail"]
        plain = client.request(method, url, content=b"{}", headers={"content-type": "text/plain"})
        assert plain.status_code == 415 and "not text/plain" in plain.json()["detail"]
        broken = client.request(
            method, url, content=b'{"type": ', headers={"content-type": "application/json"}
        )
        assert broken.status_code == 422
        assert broken.json()["detail"][0]["msg"] == "JSON decode error"
    assert len(client.get("/api/detectors").json()) == 1
    assert client.get("/api/jobs").json() == []


def test_nan_and_infinity_in_json_numbers(small_json_limit):
    client, detector_id = small_json_limit
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        response = client.post(
            f"/api/detectors/{detector_id}/train",
            content=b'{"seconds": ' + literal + b"}",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "seconds"]
    assert client.get("/api/jobs").json() == []


# --- GeoJSON --------------------------------------------------------------------------------------


@pytest.fixture
def layer(client, tmp_path) -> dict:
    image = upload(client, write_rgb_tif(tmp_path / "rgb.tif", width=512, height=512))
    onnx = corpus.tiny_detector(tmp_path / "tiny.onnx")
    detector = client.post("/api/detectors/import", files={"file": ("t.onnx", onnx.read_bytes())})
    custom = client.post("/api/detectors", json={"name": "custom", "classes": ["tree"]})
    return {"image": image, "detector": detector.json(), "custom": custom.json()}


def ring_around(lon: float, lat: float, size: float = 0.0005) -> list[list[float]]:
    return [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]


def bad_polygons(lon: float, lat: float) -> dict[str, tuple[dict, list[str], list[str]]]:
    """name -> (geometry, words in the AOI refusal, words in the annotations refusal)."""
    s = 0.0005
    closed = ring_around(lon, lat)
    return {
        "self-intersecting": (
            [[[lon, lat], [lon + s, lat + s], [lon + s, lat], [lon, lat + s], [lon, lat]]],
            ["invalid", "Self-intersection"],
            ["Self-intersection"],
        ),
        "unclosed ring": ([closed[:-1]], ["not closed"], ["not closed"]),
        "outside WGS84": (
            [[[200.0, 0.0], [201.0, 0.0], [201.0, 1.0], [200.0, 0.0]]],
            ["outside WGS84"],
            ["outside WGS84"],
        ),
        "wrong nesting": (closed, ["wrongly nested"], ["wrongly nested"]),
        "NaN coordinate": (
            [[[math.nan, lat], [lon + s, lat], [lon, lat + s], [math.nan, lat]]],
            ["not a finite number"],
            ["outside WGS84"],
        ),
    }


def send_json(client, method: str, url: str, value) -> object:
    # json.dumps writes NaN as the literal NaN, as a careless client would.
    body = json.dumps(value).encode()
    return client.request(method, url, content=body, headers={"content-type": "application/json"})


def test_bad_geojson_in_aois_and_annotations(client, settings, layer):
    image, detector, custom = layer["image"], layer["detector"], layer["custom"]
    lon, lat = image["bounds_wgs84"][0] + 0.0001, image["bounds_wgs84"][1] + 0.0001
    exports = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
    annotations = f"/api/detectors/{custom['id']}/annotations"
    for name, (coordinates, aoi_words, annotation_words) in bad_polygons(lon, lat).items():
        geometry = {"type": "Polygon", "coordinates": coordinates}
        refused = send_json(client, "POST", exports, {"format": "geojson", "aoi": geometry})
        assert refused.status_code == 422, (name, refused.text)
        assert all(w in refused.json()["detail"] for w in aoi_words), (name, refused.text)
        feature = {
            "type": "Feature",
            "properties": {"role": "training_area", "image_id": image["id"]},
            "geometry": geometry,
        }
        collection = {"type": "FeatureCollection", "features": [feature]}
        refused = send_json(client, "PUT", annotations, collection)
        assert refused.status_code == 422, (name, refused.text)
        detail = refused.json()["detail"]
        assert detail.startswith("feature 0") and all(w in detail for w in annotation_words)
    assert client.get("/api/exports").json() == []
    assert client.get(annotations).json()["features"] == []
    accepted = send_json(
        client,
        "POST",
        exports,
        {"aoi": {"type": "Polygon", "coordinates": [ring_around(lon, lat)]}},
    )
    assert accepted.status_code == 202, accepted.text


def test_a_million_vertices_are_refused_quickly(client, layer):
    image, detector, custom = layer["image"], layer["detector"], layer["custom"]
    lon, lat = image["bounds_wgs84"][0] + 0.0001, image["bounds_wgs84"][1] + 0.0001
    ring = [[round(lon, 4), round(lat, 4)]] * 1_000_000  # 20 MB of JSON: under the body limit
    polygon = {"type": "Polygon", "coordinates": [ring]}
    targets = [
        ("POST", f"/api/detectors/{detector['id']}/images/{image['id']}/exports", {"aoi": polygon}),
        (
            "PUT",
            f"/api/detectors/{custom['id']}/annotations",
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"class": "tree", "image_id": image["id"]},
                        "geometry": polygon,
                    }
                ],
            },
        ),
        ("POST", f"/api/images/{image['id']}/statistics", {"type": "Feature", "geometry": polygon}),
    ]
    for method, url, value in targets:
        started = time.monotonic()
        response = send_json(client, method, url, value)
        assert time.monotonic() - started < 60  # parsing 20 MB of JSON dominates (~1 s idle)
        assert response.status_code in (400, 422), (url, response.text)
        assert "100000 vertices" in response.json()["detail"]
    assert client.get("/api/exports").json() == []


def test_posted_features_for_image_data(client, layer):
    image = layer["image"]
    root = f"/api/images/{image['id']}"
    lon, lat = image["bounds_wgs84"][0], image["bounds_wgs84"][1]
    far = {
        "type": "Feature",
        "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [ring_around(lon - 1, lat - 1, 2.0)]},
    }
    huge = client.post(f"{root}/feature.png", json=far)
    assert huge.status_code == 400 and "pass max_size" in huge.json()["detail"]
    assert client.post(f"{root}/feature.png?max_size=256", json=far).status_code == 200
    nan = send_json(
        client,
        "POST",
        f"{root}/statistics",
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[math.nan, lat], [lon, lat], [lon, lat + 1], [math.nan, lat]]],
            },
        },
    )
    assert nan.status_code == 400 and "finite" in nan.json()["detail"]
    ring = ring_around(lon, lat)
    with_empty = {
        "type": "GeometryCollection",
        "geometries": [
            {"type": "Polygon", "coordinates": [ring]},
            {"type": "MultiPolygon", "coordinates": [[]]},
        ],
    }
    for route in ("feature", "feature.png", "feature/64x64.png", "statistics"):
        empty = client.post(f"{root}/{route}", json={"type": "Feature", "geometry": with_empty})
        assert empty.status_code == 400, (route, empty.text)
        assert "empty MultiPolygon" in empty.json()["detail"]
    point = {"type": "Point", "coordinates": [lon, lat]}
    for route in ("feature", "statistics"):
        flat = client.post(f"{root}/{route}", json={"type": "Feature", "geometry": point})
        assert flat.status_code == 400 and "has no area" in flat.json()["detail"], flat.text
    nothing = {"type": "GeometryCollection", "geometries": []}
    empty = client.post(f"{root}/feature.png", json={"type": "Feature", "geometry": nothing})
    assert empty.status_code == 400 and "empty GeometryCollection" in empty.json()["detail"]
    fill = client.post(
        f"{root}/statistics?nodata=nan",
        json={
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [ring]},
        },
    )
    assert fill.status_code == 400 and "nodata=nan" in fill.json()["detail"]
    assert (
        client.post(
            f"{root}/statistics?nodata=0",
            json={
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            },
        ).status_code
        == 200
    )
    assert client.get(f"{root}/preview.png?nodata=0").status_code == 200


# --- tiles and image-data parameters --------------------------------------------------------------


def test_tile_coordinates_outside_the_grid(client, layer):
    image, detector = layer["image"], layer["detector"]
    roots = [
        f"/api/images/{image['id']}/tiles",
        f"/api/detectors/{detector['id']}/images/{image['id']}/tiles",
    ]
    for root in roots:
        for path, words in [
            ("WebMercatorQuad/-1/0/0.png", "zoom -1 is out of range"),
            ("WebMercatorQuad/25/0/0.png", "zoom levels 0 to 24"),
            ("WebMercatorQuad/1/2/0.png", "x is 0 to 1"),
            ("WebMercatorQuad/3/0/8.png", "y is 0 to 7"),
            ("WGS1984Quad/0/2/0.png", "x is 0 to 1 and y is 0 to 0"),
            ("LINZAntarticaMapTilegrid/91186/0/0.png?padding=1", "zoom levels 0 to 13"),
        ]:
            response = client.get(f"{root}/{path}")
            assert response.status_code == 404, (root, path, response.text)
            assert words in response.json()["detail"]
        negative = client.get(f"{root}/WebMercatorQuad/3/-1/0.png")
        assert negative.status_code in (404, 422)
        unknown_ext = client.get(f"{root}/WebMercatorQuad/3/0/0.exe")
        assert unknown_ext.status_code == 422 and "png" in unknown_ext.text
        unknown_grid = client.get(f"{root}/Nowhere/3/0/0.png")
        assert unknown_grid.status_code == 422 and "WebMercatorQuad" in unknown_grid.text


IMAGE_DATA_REFUSALS = {
    "tiles/WebMercatorQuad/0/0/0.png?tilesize=100000": "outputs are at most 4096 px",
    "tiles/WebMercatorQuad/0/0/0.png?buffer=1e9": "buffer=1e+09 is out of range",
    "tiles/WebMercatorQuad/0/0/0.png?padding=3000": "padding=3000 is out of range",
    "tiles/WebMercatorQuad/0/0/0.png?bidx=0": "band 0 does not exist",
    "tiles/WebMercatorQuad/0/0/0.png?bidx=4": "the image has bands 1 to 3",
    "preview.png?max_size=100000": "max_size=100000 is too large",
    "preview/20000x20000.png": "width=20000 is too large",
    "bbox/0,0,1,1/100000x100000.png": "width=100000 is too large",
    "bbox/nan,nan,nan,nan.png": "finite numbers",
    "point/nan,nan": "finite numbers",
    "point/1e308,1e308": "outside WGS84",
    "statistics?max_size=100000": "max_size=100000",
    # Found by a long schemathesis run: each was a 500 from rio-tiler or GDAL.
    "preview?nodata=nan": "nodata=nan cannot be a pixel value of this uint8 image",
    "preview.png?nodata=nan": "use a number from 0 to 255",
    "preview.png?nodata=300": "nodata=300 cannot be",
    "tiles/WebMercatorQuad/0/0/0.png?nodata=-1": "nodata=-1 cannot be",
    "statistics?nodata=inf": "nodata=inf cannot be",
    "preview/0x0.png": "width=0 is too small",
    "bbox/0,0,0,0.png?width=0": "width=0 is too small",
    "bbox/0,0,0,0/0x0.png": "width=0 is too small",
    "bbox/0,0,0,0.png": "the box 0,0,0,0 is empty",
    "bbox/1,1,0,0.png": "minx < maxx",
    "bbox/0,0,1,1.png?max_size=0": "max_size=0 is too small",
    "statistics?histogram_bins=0": "histogram_bins=0 must be a whole number of bins",
    "statistics?histogram_bins=3,2,1": "bin edges must be finite and increasing",
    "preview.png?algorithm=max&algorithm_params=null": "algorithm_params must be a JSON object",
    "statistics?histogram_range=5,-5": "must be 'min,max' with finite min < max",
    "tiles/EuropeanETRS89_LAEAQuad?maxzoom=1563": "maxzoom=1563 is out of range",
    "tiles/WebMercatorQuad?minzoom=10&maxzoom=3": "minzoom=10 is above maxzoom=3",
    # Unsized, these read at the image's resolution: gigabytes (a 622 GiB allocation was asked
    # for), or minutes of warping for one padded tile.
    "bbox/-10,-10,10,10.png": "at the image's resolution",
    "tiles/WebMercatorQuad/0/0/0.png?padding=1": "padding reads tile 0/0/0",
    "tiles/WorldCRS84Quad/0/0/0?padding=1": "padding reads tile 0/0/0",
}


@pytest.mark.parametrize("path", list(IMAGE_DATA_REFUSALS))
def test_image_data_parameters_that_cannot_be_served(client, rgb_image, path):
    response = client.get(f"/api/images/{rgb_image['id']}/{path}")
    assert response.status_code == 400, response.text
    assert IMAGE_DATA_REFUSALS[path] in response.json()["detail"]


def test_reads_at_the_image_resolution_within_bounds_are_served(client, rgb_image):
    """What the refusals above bound still works: a padded tile at the native zoom, a small box
    without a size, histogram edges, algorithm parameters."""
    import morecantile

    root = f"/api/images/{rgb_image['id']}"
    west, south, east, north = rgb_image["bounds_wgs84"]
    z = rgb_image["maxzoom"]
    tile = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, z)
    padded = client.get(f"{root}/tiles/WebMercatorQuad/{z}/{tile.x}/{tile.y}.png?padding=2")
    assert padded.status_code == 200, padded.text
    small = client.get(f"{root}/bbox/{west},{south},{east},{north}.png")
    assert small.status_code == 200, small.text
    edges = client.get(f"{root}/statistics?histogram_bins=0,64,128,255")
    assert edges.status_code == 200, edges.text
    params = client.get(f"{root}/preview.png?algorithm=hillshade&algorithm_params=%7B%7D&bidx=1")
    assert params.status_code == 200, params.text


def test_a_point_outside_the_image(client, rgb_image):
    response = client.get(f"/api/images/{rgb_image['id']}/point/-120,40")
    assert response.status_code == 404
    assert "outside" in response.json()["detail"]


def test_unknown_export_formats_and_grids(client, layer):
    image, detector = layer["image"], layer["detector"]
    layer_root = f"/api/detectors/{detector['id']}/images/{image['id']}"
    shapefile = client.post(f"{layer_root}/exports", json={"format": "shp"})
    assert shapefile.status_code == 422
    assert "choose one of fgb, geojson, gpkg, parquet" in shapefile.json()["detail"]
    crs = client.post(f"{layer_root}/exports", json={"crs": "EPSG:999999"})
    assert crs.status_code == 422 and "unknown CRS" in crs.json()["detail"]
    assert client.get(f"{layer_root}/Nowhere/tilejson.json").status_code == 422
    assert client.get(f"{layer_root}/WebMercatorQuad/tilejson.json?format=jpg").status_code == 422
    assert client.get(f"/api/images/{image['id']}/Nowhere/tilejson.json").status_code == 422
    assert client.get("/api/exports").json() == []


# --- names ----------------------------------------------------------------------------------------


def test_control_characters_in_names_are_refused(client, settings, tmp_path, rgb_tif):
    onnx = corpus.tiny_detector(tmp_path / "tiny.onnx")
    cases = [
        client.post(
            "/api/images",
            params={"name": "a\x00b"},
            files={"file": ("x.tif", rgb_tif.read_bytes())},
        ),
        client.post(
            "/api/detectors/import",
            params={"name": "evil\x00.onnx"},
            files={"file": ("t.onnx", onnx.read_bytes())},
        ),
        client.post("/api/detectors", json={"name": "line\nbreak", "classes": ["tree"]}),
        client.post("/api/detectors", json={"name": "ok", "classes": ["tr\x00ee"]}),
    ]
    for response in cases:
        assert response.status_code == 422, response.text
        assert "control character" in response.json()["detail"]
    assert_nothing_stored(client, settings)
    assert client.get("/api/detectors").json() == []
    # By hand: httpx would percent-encode the NUL of a filename.
    raw = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a\x00.onnx"\r\n\r\n'
        + onnx.read_bytes()
        + b"\r\n--xyz--\r\n"
    )
    nul_filename = client.post(
        "/api/detectors/import",
        content=raw,
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert nul_filename.status_code == 400, nul_filename.text
    assert "control characters" in nul_filename.json()["detail"]
    traversal = client.post(
        "/api/detectors/import", files={"file": ("../../model.onnx", onnx.read_bytes())}
    )
    assert traversal.status_code == 400 and "path components" in traversal.json()["detail"]
    assert_still_serving(client, rgb_tif)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "C:\\Windows\\x"])
def test_path_like_names_are_only_labels(client, settings, rgb_tif, name):
    """A display name never becomes a path: the COG is stored under the image id."""
    image = upload(client, rgb_tif, name=name)
    assert image["name"] == name
    files = stored_files(settings)
    assert [p.relative_to(settings.blob_dir).as_posix() for p in files] == [
        f"images/{image['id']}/{image['id']}.tif"
    ]
    wmts = client.get("/wmts/WMTSCapabilities.xml")
    assert wmts.status_code == 200


def test_attachment_names_cannot_leave_the_version(client, layer):
    detector = layer["detector"]
    root = f"/api/detectors/{detector['id']}/versions/1"
    for name in ("..%2F..%2Ftiledetect.db", "%2Fetc%2Fpasswd", "model.onnx%00.json", "x.json"):
        response = client.get(f"{root}/{name}")
        assert response.status_code == 404, (name, response.text)
    assert client.get(f"{root}/model.onnx").status_code == 200


# --- properties -----------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    tms=st.sampled_from(["WebMercatorQuad", "WGS1984Quad", "EuropeanETRS89_LAEAQuad"]),
    z=st.integers(-3, 40),
    x=st.integers(-5, 2**40),
    y=st.integers(-5, 2**40),
)
def test_any_tile_address_is_served_or_refused_with_a_reason(client, rgb_image, tms, z, x, y):
    import morecantile

    grid = morecantile.tms.get(tms)
    response = client.get(f"/api/images/{rgb_image['id']}/tiles/{tms}/{z}/{x}/{y}.png")
    assert response.status_code in (200, 404, 422), response.text
    in_grid = grid.minzoom <= z <= grid.maxzoom
    if in_grid:
        matrix = grid.matrix(z)
        in_grid = 0 <= x < matrix.matrixWidth and 0 <= y < matrix.matrixHeight
    if not in_grid:
        assert response.status_code in (404, 422)
        assert "out of range" in response.text or "outside the" in response.text


@FUZZ
@given(
    tilesize=st.one_of(st.none(), st.integers(-10, 10_000)),
    buffer=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    bidx=st.one_of(st.none(), st.integers(-3, 6)),
    scale=st.sampled_from(["", "@2x", "@4x"]),
)
def test_tile_parameters_never_fail_the_server(client, rgb_image, tilesize, buffer, bidx, scale):
    z = rgb_image["maxzoom"] - 3
    tile = "/".join(str(v) for v in _tile_of(rgb_image, z))
    params = {}
    if tilesize is not None:
        params["tilesize"] = tilesize
    if buffer is not None:
        params["buffer"] = buffer
    if bidx is not None:
        params["bidx"] = bidx
    response = client.get(
        f"/api/images/{rgb_image['id']}/tiles/WebMercatorQuad/{tile}{scale}.png", params=params
    )
    assert response.status_code < 500, (params, response.text)
    if response.status_code >= 400:
        assert response.json()["detail"]


def _tile_of(image: dict, z: int) -> tuple[int, int, int]:
    import morecantile

    west, south, east, north = image["bounds_wgs84"]
    tile = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, z)
    return tile.z, tile.x, tile.y


finite = st.floats(-200, 200, allow_nan=False)
positions = st.lists(
    st.one_of(
        st.tuples(finite, finite).map(list),
        st.just([math.nan, 0.0]),
        st.just([0.0, math.inf]),
        st.just(["a", 1]),
        st.just([1]),
        st.just([[1, 2]]),
    ),
    max_size=8,
)
geometries = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["Polygon", "MultiPolygon", "Point", "LineString", "Nope"]),
        "coordinates": st.one_of(
            positions, st.lists(positions, max_size=3), st.lists(st.lists(positions, max_size=2))
        ),
    }
)


@FUZZ
@given(
    aoi=st.one_of(geometries, st.builds(lambda g: {"type": "Feature", "geometry": g}, geometries))
)
def test_any_aoi_is_refused_with_a_reason_or_accepted(client, layer, aoi):
    image, detector = layer["image"], layer["detector"]
    url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
    response = send_json(client, "POST", url, {"format": "geojson", "aoi": aoi})
    assert response.status_code in (202, 422), response.text
    if response.status_code == 422:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "AOI" in detail
    else:
        client.post(f"/api/exports/{response.json()['id']}/cancel")
