"""Bad input: a 4xx that says what is wrong, nothing stored, and the server keeps serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from rasterio.transform import from_origin

from server.app import create_app
from server.settings import Settings
from tests.conftest import upload, write_rgb_tif


def assert_nothing_stored(client, settings: Settings) -> None:
    assert client.get("/api/images").json() == []
    assert client.get("/api/jobs").json() == []
    leftovers = [
        p
        for root in (settings.blob_dir, settings.upload_dir)
        if root.exists()
        for p in root.rglob("*")
        if p.is_file()
    ]
    assert leftovers == []


def assert_still_serving(client, good_tif: Path) -> None:
    assert client.get("/healthz").status_code == 200
    assert upload(client, good_tif)["status"] == "ready"


def post_file(client, content: bytes, filename: str = "image.tif"):
    return client.post("/api/images", files={"file": (filename, content, "image/tiff")})


def no_georeference(tmp_path: Path) -> bytes:
    path = tmp_path / "plain.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8"
    ) as dst:
        dst.write(np.zeros((3, 64, 64), np.uint8))
    return path.read_bytes()


def complex_dtype(tmp_path: Path) -> bytes:
    path = tmp_path / "complex.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="complex64",
        crs="EPSG:32633",
        transform=from_origin(500000, 5400000, 1, 1),
    ) as dst:
        dst.write(np.ones((1, 64, 64), np.complex64))
    return path.read_bytes()


def too_many_bands(tmp_path: Path) -> bytes:
    path = tmp_path / "hyperspectral.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=32,
        height=32,
        count=40,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(500000, 5400000, 1, 1),
    ) as dst:
        dst.write(np.ones((40, 32, 32), np.uint16))
    return path.read_bytes()


def png_file(tmp_path: Path) -> bytes:
    path = tmp_path / "photo.png"
    with rasterio.open(path, "w", driver="PNG", width=32, height=32, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 32, 32), np.uint8))
    return path.read_bytes()


def truncated(tmp_path: Path) -> bytes:
    # Uncompressed strips, so the header (at the front) survives and the pixels do not.
    path = write_rgb_tif(tmp_path / "whole.tif", width=1024, height=1024, tiled=False)
    content = path.read_bytes()
    return content[: len(content) // 2]


BAD_FILES = {
    "not a raster": (lambda _tmp: b"id,name\n1,not an image\n" * 100, "not a raster"),
    "truncated tiff": (truncated, "truncated"),
    "no georeference": (no_georeference, "no georeference"),
    "complex dtype": (complex_dtype, "complex64 is not supported"),
    "too many bands": (too_many_bands, "40 bands"),
    "png, not geotiff": (png_file, "only GeoTIFF"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_refused_with_a_reason(client, settings, tmp_path, rgb_tif, case):
    make, message = BAD_FILES[case]
    response = post_file(client, make(tmp_path))
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert_nothing_stored(client, settings)
    assert_still_serving(client, rgb_tif)


def test_upload_over_the_size_limit(tmp_path, rgb_tif):
    settings = Settings(data_dir=tmp_path / "data", max_upload_bytes=100_000)
    with TestClient(create_app(settings)) as client:
        big = write_rgb_tif(tmp_path / "big.tif", width=512, height=512)  # ~800 kB
        response = post_file(client, big.read_bytes())
        assert response.status_code == 413
        assert "larger than the limit of 100000 bytes" in response.json()["detail"]
        assert_nothing_stored(client, settings)
        small = write_rgb_tif(tmp_path / "small.tif", width=128, height=128, compress="deflate")
        assert_still_serving(client, small)


@pytest.mark.parametrize("filename", ["../../etc/evil.tif", "dir/image.tif", "..\\x.tif", ".."])
def test_filename_with_path_components(client, settings, rgb_tif, filename):
    response = post_file(client, rgb_tif.read_bytes(), filename=filename)
    assert response.status_code == 400
    assert "path components" in response.json()["detail"]
    assert_nothing_stored(client, settings)


def test_malformed_requests(client, settings, rgb_tif):
    wrong_field = client.post("/api/images", files={"image": ("a.tif", rgb_tif.read_bytes())})
    assert wrong_field.status_code == 400
    assert "field 'file'" in wrong_field.json()["detail"]

    raw_body = client.post(
        "/api/images", content=rgb_tif.read_bytes(), headers={"content-type": "image/tiff"}
    )
    assert raw_body.status_code == 415
    assert "multipart/form-data" in raw_body.json()["detail"]

    empty = post_file(client, b"")
    assert empty.status_code == 400
    assert "empty" in empty.json()["detail"]
    assert_nothing_stored(client, settings)


def test_unknown_ids(client):
    for url in (
        "/api/images/doesnotexist",
        "/api/images/doesnotexist/info",
        "/api/images/doesnotexist/tiles/WebMercatorQuad/18/140000/90000.png",
        "/api/images/doesnotexist/WebMercatorQuad/tilejson.json",
        "/api/jobs/doesnotexist",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "doesnotexist" in response.json()["detail"]
    assert client.delete("/api/images/doesnotexist").status_code == 404


def test_tile_requests_outside_the_image_or_the_grid(client, rgb_image):
    root = f"/api/images/{rgb_image['id']}/tiles"
    z = rgb_image["maxzoom"]
    outside = client.get(f"{root}/WebMercatorQuad/{z}/0/0.png")
    assert outside.status_code == 404
    assert "outside" in outside.json()["detail"].lower()

    beyond_grid = client.get(f"{root}/WebMercatorQuad/40/0/0.png")
    assert beyond_grid.status_code == 404
    assert "zoom levels 0 to 24" in beyond_grid.json()["detail"]

    unknown_grid = client.get(f"{root}/NoSuchGrid/1/0/0.png")
    assert unknown_grid.status_code == 422
    assert "NoSuchGrid" in unknown_grid.text

    bad_format = client.get(f"{root}/WebMercatorQuad/{z}/0/0.bmp")
    assert bad_format.status_code == 422
    assert client.get("/healthz").status_code == 200


def test_image_paths_cannot_come_from_the_request(client, rgb_image, tmp_path):
    """Only catalogue images can be read: a url parameter is not a way in."""
    secret = write_rgb_tif(tmp_path / "secret.tif", width=256, height=256)
    response = client.get(f"/api/images/{rgb_image['id']}/info", params={"url": str(secret)})
    assert response.status_code == 200
    assert response.json()["width"] == 1024  # the catalogue image, not the file named in the query
    assert client.get("/cog/info", params={"url": str(secret)}).status_code == 404
