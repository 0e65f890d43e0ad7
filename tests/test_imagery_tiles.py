"""Imagery tiles, TileJSON, WMTS, info, statistics and preview for catalogue images."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from io import BytesIO

import morecantile
import numpy as np
import pytest
from rasterio.io import MemoryFile
from rasterio.warp import Resampling, reproject

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
WMTS_NS = {"wmts": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}


def decode(content: bytes) -> tuple[np.ndarray, dict]:
    with MemoryFile(BytesIO(content)) as memfile, memfile.open() as dataset:
        return dataset.read(), dataset.profile


def centre_tile(image: dict, zoom: int, tms=WEB_MERCATOR) -> morecantile.Tile:
    west, south, east, north = image["bounds_wgs84"]
    return tms.tile((west + east) / 2, (south + north) / 2, zoom)


def expected_pixels(source_path, tile: morecantile.Tile, size: int = 256) -> np.ndarray:
    """What the tile should show: the source warped by GDAL into the tile's bounds."""
    import rasterio

    bounds = WEB_MERCATOR.xy_bounds(tile)
    transform = rasterio.transform.from_bounds(*bounds, size, size)
    out = np.zeros((3, size, size), np.uint8)
    with rasterio.open(source_path) as src:
        reproject(
            src.read(),
            out,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs="EPSG:3857",
            resampling=Resampling.bilinear,
        )
    return out


@pytest.mark.parametrize(
    ("extension", "driver", "bands"),
    [("png", "PNG", {4}), ("jpg", "JPEG", {3}), ("webp", "WEBP", {3, 4})],
)
def test_xyz_tile_formats_match_the_source(client, rgb_image, rgb_tif, extension, driver, bands):
    tile = centre_tile(rgb_image, rgb_image["maxzoom"])
    response = client.get(
        f"/api/images/{rgb_image['id']}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.{extension}"
    )
    assert response.status_code == 200, response.text
    pixels, profile = decode(response.content)
    assert profile["driver"] == driver
    assert (profile["width"], profile["height"]) == (256, 256)
    assert profile["count"] in bands
    assert profile["dtype"] == "uint8"
    if profile["count"] == 4:
        assert (pixels[3] == 255).all()  # the centre tile is inside the image: fully opaque
    difference = np.abs(pixels[:3].astype(int) - expected_pixels(rgb_tif, tile).astype(int))
    assert np.median(difference) <= 4, np.median(difference)


def test_retina_suffix_and_tilesize(client, rgb_image):
    tile = centre_tile(rgb_image, rgb_image["maxzoom"])
    base = f"/api/images/{rgb_image['id']}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}"
    for url in (f"{base}@2x.png", f"{base}.png?tilesize=512"):
        response = client.get(url)
        assert response.status_code == 200, response.text
        _, profile = decode(response.content)
        assert (profile["width"], profile["height"]) == (512, 512)
    _, profile = decode(client.get(f"{base}@2x").content)
    assert profile["width"] == 512


def test_edge_tile_is_transparent_outside_the_image(client, rgb_image):
    west, _south, _east, north = rgb_image["bounds_wgs84"]
    tile = WEB_MERCATOR.tile(west, north, rgb_image["maxzoom"])
    pixels, _ = decode(
        client.get(
            f"/api/images/{rgb_image['id']}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
        ).content
    )
    alpha = pixels[3]
    assert 0 < (alpha == 255).mean() < 1  # part image, part transparent


@pytest.mark.parametrize("tms_id", ["WGS1984Quad", "WorldCRS84Quad", "EuropeanETRS89_LAEAQuad"])
def test_other_tile_matrix_sets(client, rgb_image, tms_id):
    tms = morecantile.tms.get(tms_id)
    degrees_per_metre = 1 / 111_320 if tms.rasterio_crs.is_geographic else 1.0
    zoom = tms.zoom_for_res(rgb_image["gsd"] * degrees_per_metre)
    tile = centre_tile(rgb_image, zoom, tms)
    response = client.get(
        f"/api/images/{rgb_image['id']}/tiles/{tms_id}/{tile.z}/{tile.x}/{tile.y}.png"
    )
    assert response.status_code == 200, response.text
    pixels, _ = decode(response.content)
    assert pixels.shape == (4, 256, 256)
    assert (pixels[3] == 255).mean() > 0.5


def test_uint16_single_band_with_rescale_and_colormap(client, dem_image):
    tile = centre_tile(dem_image, dem_image["maxzoom"])
    base = f"/api/images/{dem_image['id']}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}"
    raw = client.get(f"{base}.tif")
    assert raw.status_code == 200
    data, profile = decode(raw.content)
    assert profile["dtype"] == "uint16"  # GeoTIFF keeps the native values

    stretched = client.get(
        f"{base}.png", params={"rescale": "1000,17000", "colormap_name": "viridis"}
    )
    assert stretched.status_code == 200, stretched.text
    pixels, profile = decode(stretched.content)
    assert profile["dtype"] == "uint8" and profile["count"] == 4  # RGBA from the colormap
    assert len({tuple(p) for p in pixels[:3].reshape(3, -1).T[::97]}) > 10  # a real ramp

    # The image's default parameters (from its statistics) stretch it without tuning.
    params = dem_image["tile_params"]
    assert "rescale=" in params
    default = client.get(f"{base}.png?{params}")
    assert default.status_code == 200
    gray, profile = decode(default.content)
    assert profile["count"] == 2  # gray + alpha
    assert gray[0][gray[1] == 255].std() > 10

    with_band = client.get(f"{base}.png", params={"bidx": 1, "rescale": "1000,17000"})
    assert with_band.status_code == 200


def test_tilejson(client, rgb_image):
    response = client.get(f"/api/images/{rgb_image['id']}/WebMercatorQuad/tilejson.json")
    assert response.status_code == 200
    tilejson = response.json()
    assert tilejson["minzoom"] == rgb_image["minzoom"]
    assert tilejson["maxzoom"] == rgb_image["maxzoom"]
    assert tilejson["bounds"] == pytest.approx(rgb_image["bounds_wgs84"])
    assert (
        f"/api/images/{rgb_image['id']}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}"
        in tilejson["tiles"][0]
    )


def test_info_statistics_and_preview(client, rgb_image):
    image_root = f"/api/images/{rgb_image['id']}"
    info = client.get(f"{image_root}/info").json()
    assert (info["width"], info["height"], info["count"]) == (1024, 1024, 3)
    assert "path" not in info and "/blobs/" not in str(info)  # never leaks the store's layout

    stats = client.get(f"{image_root}/statistics").json()
    assert set(stats) == {"b1", "b2", "b3"}
    assert stats["b1"]["max"] >= 250

    preview = client.get(f"{image_root}/preview.png", params={"max_size": 300})
    assert preview.status_code == 200
    pixels, profile = decode(preview.content)
    assert (profile["width"], profile["height"]) == (300, 300)


def test_per_image_wmts(client, rgb_image):
    response = client.get(f"/api/images/{rgb_image['id']}/WMTSCapabilities.xml")
    assert response.status_code == 200
    root = ET.fromstring(response.content)
    layers = root.findall(".//wmts:Contents/wmts:Layer", WMTS_NS)
    assert layers
    identifiers = [layer.find("ows:Identifier", WMTS_NS).text for layer in layers]
    assert all("/" not in identifier for identifier in identifiers)
    assert f"/api/images/{rgb_image['id']}/tiles/" in response.text


def test_service_wmts_lists_every_ready_image(client, rgb_image, dem_image):
    response = client.get("/wmts/WMTSCapabilities.xml")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.content)
    layers = {
        layer.find("ows:Identifier", WMTS_NS).text: layer
        for layer in root.findall(".//wmts:Contents/wmts:Layer", WMTS_NS)
    }
    assert set(layers) == {
        f"image-{rgb_image['id']}",
        f"image-{rgb_image['id']}-WGS1984Quad",
        f"image-{dem_image['id']}",
        f"image-{dem_image['id']}-WGS1984Quad",
    }
    template = layers[f"image-{dem_image['id']}"].find("wmts:ResourceURL", WMTS_NS).get("template")
    assert f"/api/images/{dem_image['id']}/tiles/WebMercatorQuad/{{TileMatrix}}/" in template
    assert "rescale=" in template  # 16-bit layers come pre-stretched for GIS clients
    # Each layer's grid holds exactly the image's zoom levels, so clients read at native detail.
    grids = {
        tms.find("ows:Identifier", WMTS_NS).text: tms
        for tms in root.findall("wmts:Contents/wmts:TileMatrixSet", WMTS_NS)
    }
    matrices = grids[f"image-{rgb_image['id']}"].findall("wmts:TileMatrix", WMTS_NS)
    levels = [int(m.find("ows:Identifier", WMTS_NS).text) for m in matrices]
    assert levels == list(range(rgb_image["minzoom"], rgb_image["maxzoom"] + 1))
    assert (
        "4326"
        in grids[f"image-{rgb_image['id']}-WGS1984Quad"].find("ows:SupportedCRS", WMTS_NS).text
    )

    client.delete(f"/api/images/{dem_image['id']}")
    after = client.get("/wmts/WMTSCapabilities.xml").text
    assert f"image-{dem_image['id']}" not in after
    assert f"image-{rgb_image['id']}" in after


def test_cache_headers_and_conditional_requests(client, rgb_image):
    tile = centre_tile(rgb_image, rgb_image["maxzoom"])
    url = f"/api/images/{rgb_image['id']}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
    first = client.get(url)
    etag = first.headers["etag"]
    assert etag.startswith('"') and len(etag) > 10
    assert "max-age=" in first.headers["cache-control"]
    assert "public" in first.headers["cache-control"]
    assert client.get(url).headers["etag"] == etag  # same pixels, same tag

    revalidated = client.get(url, headers={"If-None-Match": etag})
    assert revalidated.status_code == 304
    assert revalidated.content == b""
    changed = client.get(url, headers={"If-None-Match": '"something-else"'})
    assert changed.status_code == 200 and changed.content == first.content

    other = client.get(url.replace(".png", ".jpg"))
    assert other.headers["etag"] != etag

    tilejson = client.get(f"/api/images/{rgb_image['id']}/WebMercatorQuad/tilejson.json")
    assert tilejson.headers["cache-control"] == "no-cache"  # metadata revalidates
    assert "etag" in tilejson.headers
    listing = client.get("/api/images")
    assert "etag" not in listing.headers


@pytest.mark.parametrize("tms_id", ["WebMercatorQuad", "WorldCRS84Quad", "UPSArcticWGS84Quad"])
def test_band_subsets_and_expressions_are_the_bands_of_the_whole_tile(client, rgb_image, tms_id):
    """bidx= and expression= tiles read every band and pick or combine them (tiles.reader): the
    same pixels as the bands of the all-band tile, at zoom 0 too, where GDAL's warper once
    served a band subset from full resolution for over a minute (bench/fuzz_api.py found it)."""
    tms = morecantile.tms.get(tms_id)
    degrees_per_metre = 1 / 111_320 if tms.rasterio_crs.is_geographic else 1.0
    native = tms.zoom_for_res(rgb_image["gsd"] * degrees_per_metre)
    for zoom in (0, native - 4, native):
        tile = centre_tile(rgb_image, zoom, tms)
        base = f"/api/images/{rgb_image['id']}/tiles/{tms_id}/{tile.z}/{tile.x}/{tile.y}.tif"
        whole = client.get(base)
        assert whole.status_code == 200, whole.text
        bands, _ = decode(whole.content)  # R, G, B and the mask
        inside = bands[3] > 0
        assert inside.any() or zoom == 0  # at zoom 0 the image is below one pixel
        picked = client.get(base, params=[("bidx", 3), ("bidx", 1)])
        assert picked.status_code == 200, picked.text
        np.testing.assert_array_equal(decode(picked.content)[0], bands[[2, 0, 3]])
        ratio = client.get(base, params={"expression": "b1/(b2+1)"})
        assert ratio.status_code == 200, ratio.text
        expected = bands[0].astype(np.float64) / (bands[1].astype(np.float64) + 1)
        values = decode(ratio.content)[0][0]
        np.testing.assert_allclose(values[inside], expected[inside], rtol=1e-6)
    missing = client.get(base, params={"expression": "b1/b7"})
    assert missing.status_code == 400 and "band 7 does not exist" in missing.text
