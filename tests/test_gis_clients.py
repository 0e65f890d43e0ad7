"""Real GIS clients against a real server: GDAL's WMTS driver and OWSLib read the service-level
capabilities, find the image's layer, and fetch tiles whose pixels match the source image.

The image is added with `tiledetect ingest` while the server runs, as a user would."""

from __future__ import annotations

import json
import subprocess
from io import BytesIO

import numpy as np
import pytest
import rasterio
from owslib.wmts import WebMapTileService
from rasterio.io import MemoryFile
from rasterio.warp import Resampling, reproject
from rasterio.windows import from_bounds

from tests.conftest import run_cli, write_dem_tif, write_rgb_tif


@pytest.fixture(scope="module")
def source_tif(tmp_path_factory):
    return write_rgb_tif(tmp_path_factory.mktemp("gis") / "survey.tif", width=2048, height=2048)


@pytest.fixture(scope="module")
def ingested(live_server, source_tif, tmp_path_factory):
    result = run_cli("ingest", str(source_tif), "--name", "survey", data_dir=live_server.data_dir)
    assert result.returncode == 0, result.stderr
    image = json.loads(result.stdout.strip().splitlines()[-1])
    assert image["status"] == "ready"
    dem = write_dem_tif(tmp_path_factory.mktemp("gis") / "dem.tif")
    assert run_cli("ingest", str(dem), data_dir=live_server.data_dir).returncode == 0
    return image


def capabilities_url(server) -> str:
    return f"{server.url}/wmts/WMTSCapabilities.xml"


def test_cli_ingest_is_seen_by_the_running_server(live_server, ingested):
    listing = live_server.get("/api/images").json()
    assert ingested["id"] in [image["id"] for image in listing]
    assert live_server.get(f"/api/images/{ingested['id']}").json()["status"] == "ready"


def test_gdalinfo_lists_every_layer(live_server, ingested):
    out = subprocess.run(
        ["gdalinfo", f"WMTS:{capabilities_url(live_server)}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"layer=image-{ingested['id']}" in out.stdout
    assert f"layer=image-{ingested['id']}-WGS1984Quad" in out.stdout
    assert out.stdout.count("_NAME=") == 4  # two images, each on two grids


@pytest.mark.parametrize(("suffix", "epsg"), [("", 3857), ("-WGS1984Quad", 4326)])
def test_gdal_reads_pixels_that_match_the_source(live_server, ingested, source_tif, suffix, epsg):
    """GDAL's WMTS driver assembles tiles into a raster at the layer's finest level; warping the
    source onto the same grid gives the same pixels."""
    dataset = f"WMTS:{capabilities_url(live_server)},layer=image-{ingested['id']}{suffix}"
    with rasterio.open(dataset) as wmts, rasterio.open(source_tif) as src:
        assert wmts.crs.to_epsg() == epsg
        # The finest level is about the source's resolution, not a far deeper one.
        src_width = rasterio.warp.calculate_default_transform(
            src.crs, wmts.crs, src.width, src.height, *src.bounds
        )[1]
        west, south, east, north = rasterio.warp.transform_bounds(src.crs, wmts.crs, *src.bounds)
        served_width = (east - west) / wmts.res[0]
        assert 0.5 < served_width / src_width < 2.1
        # The middle of the image.
        dx, dy = (east - west) / 4, (north - south) / 4
        window = from_bounds(west + dx, south + dy, east - dx, north - dy, wmts.transform)
        window = window.round_offsets().round_lengths()
        served = wmts.read((1, 2, 3), window=window)
        transform = wmts.window_transform(window)
        expected = np.zeros_like(served)
        reproject(
            src.read(),
            expected,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs=wmts.crs,
            resampling=Resampling.bilinear,
        )
    assert served.shape[1] > 200 and served.shape[2] > 200
    difference = np.abs(served.astype(int) - expected.astype(int))
    assert np.median(difference) <= 4
    assert difference.mean() < 6


def test_owslib_lists_layers_and_fetches_a_tile(live_server, ingested, source_tif):
    service = WebMapTileService(capabilities_url(live_server))
    layer_id = f"image-{ingested['id']}"
    assert layer_id in service.contents
    layer = service.contents[layer_id]
    assert layer.title == "survey"
    assert list(layer.tilematrixsetlinks) == [layer_id]
    assert f"{layer_id}-WGS1984Quad" in service.contents
    west, south, east, north = layer.boundingBoxWGS84
    image = live_server.get(f"/api/images/{ingested['id']}").json()
    assert (west, south, east, north) == pytest.approx(image["bounds_wgs84"], abs=1e-6)

    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    tile = tms.tile((west + east) / 2, (south + north) / 2, image["maxzoom"])
    response = service.gettile(
        layer=layer_id,
        tilematrixset=layer_id,
        tilematrix=str(tile.z),
        row=tile.y,
        column=tile.x,
        format="image/png",
    )
    with MemoryFile(BytesIO(response.read())) as memfile, memfile.open() as png:
        pixels = png.read()
    assert pixels.shape == (4, 256, 256)
    expected = np.zeros((3, 256, 256), np.uint8)
    with rasterio.open(source_tif) as src:
        reproject(
            src.read(),
            expected,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=rasterio.transform.from_bounds(*tms.xy_bounds(tile), 256, 256),
            dst_crs="EPSG:3857",
            resampling=Resampling.bilinear,
        )
    assert np.median(np.abs(pixels[:3].astype(int) - expected.astype(int))) <= 4
