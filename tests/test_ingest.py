"""Ingest turns a GeoTIFF into a valid COG that keeps its CRS and resolution, and describes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from catalog.blobstore import LocalBlobStore
from catalog.db import Database
from catalog.images import ImageCatalog
from catalog.ingest import Ingestor
from catalog.jobs import JobStore
from tests.conftest import DEM_RES, RGB_GSD, RGB_ORIGIN, rgb_pattern, write_rgb_tif
from tiles.cog import cog_profile_for, write_cog
from tiles.metadata import describe_cog
from tiles.source import inspect_source


@pytest.fixture
def ingestor(tmp_path: Path) -> Ingestor:
    db = Database(f"sqlite:///{tmp_path / 'catalog.db'}")
    return Ingestor(ImageCatalog(db, LocalBlobStore(tmp_path / "blobs")), JobStore(db))


def ingest(ingestor: Ingestor, path: Path):
    ticket = ingestor.submit(path, path.name)
    progress: list[float] = []
    record = ingestor.run(ticket, progress=progress.append)
    return record, progress, ingestor.images.blobs.path(record.cog_key)


def test_rgb_becomes_a_jpeg_ycbcr_cog_with_overviews(ingestor, tmp_path):
    source = write_rgb_tif(tmp_path / "big.tif", width=2048, height=1536)
    record, progress, cog = ingest(ingestor, source)

    valid, errors, _warnings = cog_validate(str(cog))
    assert valid, errors
    with rasterio.open(cog) as dst, rasterio.open(source) as src:
        assert dst.crs == src.crs
        assert dst.transform == src.transform
        assert (dst.width, dst.height, dst.count) == (2048, 1536, 3)
        assert dst.compression.value == "JPEG"
        assert dst.photometric.value == "YCbCr"
        assert dst.block_shapes[0] == (512, 512)
        assert dst.overviews(1) == [2, 4]
        # Lossy but faithful: JPEG q90 on smooth gradients stays within a few levels.
        difference = np.abs(dst.read().astype(int) - src.read().astype(int))
        assert np.median(difference) <= 2
        assert difference.mean() < 3

    assert progress[-1] == 1.0
    assert progress == sorted(progress)
    meta = record.meta
    assert meta["crs"] == "EPSG:32633"
    assert meta["bounds"] == pytest.approx(
        [
            RGB_ORIGIN[0],
            RGB_ORIGIN[1] - 1536 * RGB_GSD,
            RGB_ORIGIN[0] + 2048 * RGB_GSD,
            RGB_ORIGIN[1],
        ]
    )
    west, south, east, north = meta["bounds_wgs84"]
    assert 14.99 < west < east < 15.05 and 48.7 < south < north < 48.8
    assert record.gsd == pytest.approx(RGB_GSD, rel=1e-6)
    assert meta["overviews"] == [2, 4]
    assert meta["band_names"] == ["b1", "b2", "b3"]
    # The red band is a left-to-right ramp 0..255: its statistics say so.
    red = meta["statistics"]["b1"]
    assert red["min"] <= 2 and red["max"] >= 250
    assert 110 < red["mean"] < 145
    # 0.3 m lands at zoom 18-19 on WebMercatorQuad at 48.7 N.
    assert meta["maxzoom"] in (18, 19)
    assert meta["minzoom"] < meta["maxzoom"]
    assert set(meta["zooms"]) == {"WebMercatorQuad", "WGS1984Quad"}


def test_uint16_keeps_values_exactly_with_deflate_and_nodata(ingestor, dem_tif):
    record, _progress, cog = ingest(ingestor, dem_tif)
    assert cog_validate(str(cog))[0]
    with rasterio.open(cog) as dst, rasterio.open(dem_tif) as src:
        assert dst.compression.value == "DEFLATE"
        assert dst.dtypes == ("uint16",)
        assert dst.nodata == 0
        assert dst.crs.to_epsg() == 4326
        assert dst.res == pytest.approx((DEM_RES, DEM_RES))
        np.testing.assert_array_equal(dst.read(1), src.read(1))
    meta = record.meta
    assert meta["mask"] == "nodata"
    assert meta["nodata"] == 0
    assert meta["dtype"] == "uint16"
    # 0.00002 degrees at 48.75 N: about 2.2 m north-south, 1.5 m east-west.
    assert 1.4 < record.gsd < 2.3
    stats = meta["statistics"]["b1"]
    assert stats["min"] >= 1000  # nodata is excluded
    assert stats["percentile_2"] < stats["percentile_98"]


def test_rgba_alpha_becomes_an_internal_mask(tmp_path):
    source = tmp_path / "rgba.tif"
    pixels = np.concatenate([rgb_pattern(512, 512), np.full((1, 512, 512), 255, np.uint8)])
    pixels[3, :100, :] = 0  # top rows transparent
    with rasterio.open(
        source,
        "w",
        driver="GTiff",
        width=512,
        height=512,
        count=4,
        dtype="uint8",
        crs="EPSG:32633",
        transform=rasterio.transform.from_origin(*RGB_ORIGIN, 0.3, 0.3),
        photometric="RGB",
        alpha="YES",
    ) as dst:
        dst.write(pixels)
    info = inspect_source(source)
    assert info.has_alpha and info.is_rgb8
    cog = tmp_path / "rgba.cog.tif"
    write_cog(source, cog, info)
    with rasterio.open(cog) as dst:
        assert dst.count == 3
        mask = dst.dataset_mask()
        assert (mask[:100] == 0).all() and (mask[100:] == 255).all()
    assert describe_cog(cog).mask == "mask"


def test_profile_suits_the_data(rgb_tif, dem_tif):
    assert cog_profile_for(inspect_source(rgb_tif))["compress"].upper() == "JPEG"
    dem_profile = cog_profile_for(inspect_source(dem_tif))
    assert dem_profile["compress"].upper() == "DEFLATE"
    assert dem_profile["predictor"] == 2


@pytest.mark.parametrize(
    ("epsg", "res", "bounds", "metres"),
    [
        (32633, 0.3, (500000, 5390000, 502000, 5400000), 0.3),  # UTM: as declared
        (2263, 1.0, (980000, 190000, 990000, 200000), 0.3048),  # US survey feet
        (3857, 0.3, (1669792, 6200000, 1670000, 6210000), 0.1985),  # Mercator at 48.5 N
        (4326, 0.00002, (15, 48.7, 15.1, 48.8), 1.8086),  # degrees
    ],
)
def test_ground_sample_distance_is_in_metres_on_the_ground(epsg, res, bounds, metres):
    from rasterio.crs import CRS

    from tiles.metadata import ground_sample_distance

    assert ground_sample_distance(CRS.from_epsg(epsg), (res, res), bounds) == pytest.approx(
        metres, rel=1e-3
    )


def test_a_catalogue_from_before_detector_colours_opens_and_gains_the_column(tmp_path):
    """Columns added since a catalogue was made are added on open; its rows stay readable."""
    import sqlite3

    from catalog.db import Database

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE detectors (id VARCHAR(32) PRIMARY KEY, name VARCHAR(255), "
            "classes JSON, created_at DATETIME)"
        )
        old.execute(
            "INSERT INTO detectors VALUES ('d1', 'trees', '[\"tree\"]', '2026-01-01 00:00:00')"
        )
    database = Database(f"sqlite:///{path}")
    try:
        from catalog.models import DetectorRecord

        with database.transaction() as session:
            record = session.get(DetectorRecord, "d1")
            assert record.classes == ["tree"] and record.colors is None
            record.colors = ["#123456"]
        with database.transaction() as session:
            assert session.get(DetectorRecord, "d1").colors == ["#123456"]
    finally:
        database.dispose()


def test_a_catalogue_from_before_remote_cogs_gains_the_remote_columns(tmp_path):
    """Images of an older catalogue open as ingested images (no remote URL)."""
    import sqlite3

    from catalog.db import Database
    from catalog.models import ImageRecord

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE images (id VARCHAR(32) PRIMARY KEY, name VARCHAR(255), "
            "status VARCHAR(16), created_at DATETIME, cog_key VARCHAR(512), cog_bytes INTEGER, "
            "source_bytes INTEGER, gsd FLOAT, meta JSON)"
        )
        old.execute(
            "INSERT INTO images VALUES ('i1', 'old', 'ready', '2026-01-01 00:00:00', "
            "'images/i1/i1.tif', 10, 10, 0.3, '{}')"
        )
    database = Database(f"sqlite:///{path}")
    try:
        with database.transaction() as session:
            record = session.get(ImageRecord, "i1")
            assert record.cog_key == "images/i1/i1.tif"
            assert record.remote_url is None and record.remote_gdal_path is None
    finally:
        database.dispose()
