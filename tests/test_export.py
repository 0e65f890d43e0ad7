"""Bulk export: the API and CLI over real Dask clusters (in-process, and a scheduler and workers
started as processes on loopback), faults (a failing cell, a killed worker, a killed server),
every output format read back with GDAL, and bad requests refused before anything starts."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import geopandas
import httpx
import mapbox_vector_tile
import morecantile
import pyogrio
import pytest
import shapely
import shapely.geometry
from distributed import Client, LocalCluster
from fastapi.testclient import TestClient
from pyproj import Transformer
from rasterio.io import MemoryFile
from shapely.geometry import box, mapping

from export.run import ExportSource, image_meta, plan_cells, run_export
from export.sweep import SweepOptions
from export.writers import format_named
from inference.metrics import match_objects
from inference.session import load_detector
from server.app import create_app
from server.settings import Settings
from tests.conftest import (
    BIN,
    dask_processes,
    start_server,
    upload,
    write_dem_tif,
    write_scene_tif,
)

CELL_PX = 640  # two windows per cell: a 1536 px scene makes 3x3 cells


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene_tif(tmp_path_factory.mktemp("export-scene") / "scene.tif", 1536, seed=21)


@pytest.fixture(scope="module")
def reference(scene, demo_onnx, tmp_path_factory):
    """The scene's objects from an undisturbed in-process export, for the fault tests."""
    folder = tmp_path_factory.mktemp("reference")
    source, jobs = _plan(scene[0], demo_onnx, folder / "cells", cell_px=320)
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        outcome = run_export(client, "ref", source, jobs, folder / "ref.gpkg", format_named("gpkg"))
    assert outcome.state == "done"
    assert outcome.summary["objects"] > 20
    return read_objects(folder / "ref.gpkg")


def _plan(tif: Path, onnx: Path, cells: Path, cell_px: int):
    spec = load_detector(onnx).spec
    source = ExportSource(str(tif), str(onnx), spec, image_meta(tif))
    return source, plan_cells(source, cells, cell_px=cell_px)


def read_objects(path: Path) -> list[tuple[str, shapely.Geometry]]:
    """Objects of an export file as (class, geometry), read with GDAL (GeoParquet: geopandas)."""
    if path.suffix == ".parquet":
        frame = geopandas.read_parquet(path)
        return list(zip(frame["class"], frame.geometry, strict=True))
    meta, table = pyogrio.read_arrow(path)
    geometries = shapely.from_wkb(
        table.column(meta["geometry_name"] or "wkb_geometry").to_numpy(False)
    )
    return list(zip(table.column("class").to_pylist(), geometries, strict=True))


def assert_same_objects(found, expected, min_iou: float = 0.99) -> None:
    assert len(found) == len(expected)
    for name in {c for c, _ in expected}:
        mine = [g for c, g in found if c == name]
        theirs = [g for c, g in expected if c == name]
        scores = match_objects(mine, theirs, min_iou=min_iou)
        assert scores.false_positives == scores.false_negatives == 0, (name, scores.as_dict())


# The API, in-process cluster -------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, scene, demo_onnx):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("export-api") / "data", export_cell_px=CELL_PX
    )
    with TestClient(create_app(settings)) as client:
        image = upload(client, scene[0])
        with open(demo_onnx, "rb") as handle:
            response = client.post(
                "/api/detectors/import", files={"file": ("demo.onnx", handle)}, params={"name": "d"}
            )
        assert response.status_code == 201, response.text
        yield client, image, response.json()


def wait_for_export(client, export_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(f"/api/exports/{export_id}").json()
        if record["state"] not in ("queued", "running"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"export {export_id} did not finish: {record}")


def test_export_in_every_format_reads_back_the_same_objects(served, tmp_path):
    client, image, detector = served
    url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
    results = {}
    for fmt in ("gpkg", "fgb", "geojson", "parquet"):
        response = client.post(url, json={"format": fmt})
        assert response.status_code == 202, response.text
        record = wait_for_export(client, response.json()["id"])
        assert record["state"] == "done", record
        assert record["cells_done"] == record["cells_total"] == 9
        assert record["cells_failed"] == 0 and record["failures"] is None
        download = client.get(record["download_url"])
        assert download.status_code == 200
        path = tmp_path / f"result.{fmt}"
        path.write_bytes(download.content)
        results[fmt] = (record, read_objects(path))
    gpkg_record, gpkg = results["gpkg"]
    summary = gpkg_record["summary"]
    assert summary["objects"] == gpkg_record["objects"] == len(gpkg) > 20
    for name, entry in summary["classes"].items():
        assert entry["count"] == sum(1 for c, _ in gpkg if c == name)
        assert entry["area_m2"] > 0
    # Every format holds the same objects; GeoJSON is in WGS84 (RFC 7946), the others in the
    # image's CRS.
    to_image = Transformer.from_crs("EPSG:4326", image["crs"], always_xy=True)
    for fmt, (record, objects) in results.items():
        assert record["summary"] == summary, fmt
        if fmt == "geojson":
            west, south, east, north = shapely.total_bounds([g for _, g in objects])
            assert image["bounds_wgs84"][0] - 0.01 < west < east < image["bounds_wgs84"][2] + 0.01
            objects = [
                (c, shapely.transform(g, lambda xy: _moved(to_image, xy))) for c, g in objects
            ]
            assert_same_objects(objects, gpkg, min_iou=0.95)
        else:
            assert_same_objects(objects, gpkg)
    # Each object carries the attributes the issue names.
    meta, table = pyogrio.read_arrow(tmp_path / "result.gpkg")
    assert {"class", "score", "area_m2", "cell"} <= set(table.column_names)
    areas = table.column("area_m2").to_numpy()
    geometries = shapely.from_wkb(table.column(meta["geometry_name"]).to_numpy(False))
    assert abs(areas.sum() - shapely.area(geometries).sum()) < 0.01 * areas.sum()


def _moved(transformer, xy):
    import numpy as np

    x, y = transformer.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def test_counts_per_zone_from_a_finished_export(served, tmp_path):
    """Zones in, per zone and class counts, density and cover out, as a table (CSV, GeoParquet)
    and as the zones with columns (GeoPackage read by GDAL's ogrinfo, GeoJSON); objects on the
    border between two zones count once."""
    import csv
    import subprocess

    client, image, detector = served
    url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
    record = wait_for_export(client, client.post(url, json={"format": "fgb"}).json()["id"])
    assert record["state"] == "done", record
    objects_path = tmp_path / "objects.fgb"
    objects_path.write_bytes(client.get(record["download_url"]).content)
    west, south, east, north = image["bounds_wgs84"]
    middle = (west + east) / 2
    zones = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"name": "west", "count": "clash"},
             "geometry": mapping(box(west - 0.001, south - 0.001, middle, north + 0.001))},
            {"type": "Feature", "properties": {"name": "east", "owner": {"id": 7}},
             "geometry": mapping(box(middle, south - 0.001, east + 0.001, north + 0.001))},
            {"type": "Feature", "properties": None,
             "geometry": mapping(box(east + 0.01, south, east + 0.02, north))},
        ],
    }  # fmt: skip
    zone_url = f"/api/exports/{record['id']}/zones"

    # What the counts should be, computed independently with geopandas.
    frame = geopandas.read_file(objects_path).to_crs("EPSG:4326")
    points = frame.geometry.representative_point()
    halves = [shapely.geometry.shape(f["geometry"]) for f in zones["features"]]
    classes = detector["classes"]
    expected = {
        (z, cls): int(((frame["class"] == cls) & points.within(zone)).sum())
        for z, zone in enumerate(halves)
        for cls in classes
    }
    assert sum(expected.values()) == len(frame) > 20  # each object in exactly one half
    utm = geopandas.GeoSeries(halves, crs="EPSG:4326").to_crs(frame.estimate_utm_crs())

    response = client.post(f"{zone_url}.csv", json=zones)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 3 * len(classes)
    for row in rows:
        z, cls = int(row["zone"]), row["class"]
        assert int(row["count"]) == expected[z, cls], row
        hectares = utm.iloc[z].area / 1e4
        assert float(row["zone_area_ha"]) == pytest.approx(hectares, rel=0.005)
        assert float(row["per_ha"]) == pytest.approx(expected[z, cls] / hectares, rel=0.01)
        mine = frame[(frame["class"] == cls) & points.within(halves[z])]
        assert float(row["area_m2"]) == pytest.approx(mine["area_m2"].sum(), abs=0.05)
    assert rows[0]["name"] == "west" and rows[0]["zone_count"] == "clash"
    assert json.loads(rows[len(classes)]["owner"]) == {"id": 7}

    gpkg = tmp_path / "zones.gpkg"
    gpkg.write_bytes(client.post(f"{zone_url}.gpkg", json=zones).content)
    info = subprocess.run(
        ["ogrinfo", "-ro", "-al", "-so", str(gpkg)], capture_output=True, text=True, check=True
    ).stdout
    assert "Feature Count: 3" in info
    for cls in classes:
        assert f"{cls}_count: Integer" in info and f"{cls}_per_ha: Real" in info
    layer = geopandas.read_file(gpkg)
    for z in range(3):
        for cls in classes:
            assert layer.iloc[z][f"{cls}_count"] == expected[z, cls]
    assert list(layer["name"][:2]) == ["west", "east"]

    parquet = tmp_path / "zones.parquet"
    parquet.write_bytes(client.post(f"{zone_url}.parquet", json=zones).content)
    table = geopandas.read_parquet(parquet)
    assert len(table) == 3 * len(classes) and table.crs.to_epsg() == 4326
    assert table.geometry.iloc[0].equals_exact(halves[0], 1e-9)

    as_geojson = client.post(f"{zone_url}.geojson", json=zones).json()
    assert [f["properties"]["name"] for f in as_geojson["features"]][:2] == ["west", "east"]

    # What cannot be understood says why; an export without objects yet is a conflict.
    point_zone = {
        "type": "FeatureCollection",
        "features": [
            zones["features"][0],
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Point", "coordinates": [west, south]},
            },
        ],
    }
    for body, fmt, status, words in (
        (point_zone, "csv", 422, "zone 1: a zone must be a Polygon or MultiPolygon"),
        ({"type": "FeatureCollection", "features": []}, "csv", 422, "no zones"),
        ([1, 2], "csv", 422, "FeatureCollection"),
        (zones, "xlsx", 422, "one of csv, parquet, gpkg, geojson"),
    ):
        response = client.post(f"{zone_url}.{fmt}", json=body)
        assert response.status_code == status, response.text
        assert words in response.json()["detail"]
    started = client.post(url, json={"format": "gpkg"}).json()
    client.post(f"/api/exports/{started['id']}/cancel")
    cancelled = wait_for_export(client, started["id"])
    if cancelled["state"] == "cancelled":
        response = client.post(f"/api/exports/{started['id']}/zones.csv", json=zones)
        assert response.status_code == 409 and "not ready" in response.json()["detail"]


def test_a_finished_export_draws_the_zoomed_out_detection_layer(served):
    """Below the on-the-fly minimum zoom, tiles come from the export: every object exactly once
    over the tiles covering the image, and no inference run."""
    client, image, detector = served
    done = [
        e
        for e in client.get("/api/exports").json()
        if e["state"] == "done" and e["aoi"] is None and e["image_id"] == image["id"]
    ]
    assert done, "runs after the whole-image exports above"
    layer = f"/api/detectors/{detector['id']}/images/{image['id']}"
    tilejson = client.get(f"{layer}/WebMercatorQuad/tilejson.json").json()
    assert tilejson["minzoom"] == 0
    tms = morecantile.tms.get("WebMercatorQuad")
    west, south, east, north = image["bounds_wgs84"]
    centre = tms.tile((west + east) / 2, (south + north) / 2, 8)
    probe = client.get(f"{layer}/tiles/WebMercatorQuad/8/{centre.x}/{centre.y}.png")
    zoom = int(probe.headers["x-tiledetect-minzoom"]) - 2
    tiles = list(tms.tiles(*image["bounds_wgs84"], zooms=[zoom]))
    engine = client.app.state.services.engine
    before = engine.windows_computed
    features, drawn, in_mvt = [], 0, 0
    for tile in tiles:
        base = f"{layer}/tiles/WebMercatorQuad/{zoom}/{tile.x}/{tile.y}"
        response = client.get(base + ".geojson")
        assert response.status_code == 200
        assert response.headers["x-tiledetect-source"].startswith("export")
        assert "x-tiledetect-empty" not in response.headers
        features += response.json()["features"]
        png = client.get(base + ".png")
        with MemoryFile(png.content) as memfile, memfile.open() as dataset:
            drawn += int((dataset.read(4) > 0).sum())
        mvt = mapbox_vector_tile.decode(client.get(base + ".mvt").content)
        in_mvt += len(mvt.get("objects", {}).get("features", []))
    assert drawn > 0 and in_mvt >= len(features)  # MVT also holds objects cut by tile edges
    assert engine.windows_computed == before
    assert len(features) == done[-1]["objects"]
    assert {f["properties"]["class"] for f in features} == set(done[-1]["summary"]["classes"])


def test_export_over_an_aoi_and_in_another_crs(served, tmp_path):
    client, image, detector = served
    west, south, east, north = image["bounds_wgs84"]
    aoi = shapely.geometry.box(west, south, (west + east) / 2, (south + north) / 2)
    url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
    response = client.post(
        url,
        json={"format": "gpkg", "aoi": shapely.geometry.mapping(aoi), "crs": "EPSG:3857"},
    )
    assert response.status_code == 202, response.text
    record = wait_for_export(client, response.json()["id"])
    assert record["state"] == "done"
    assert record["cells_total"] == 4  # the quarter of a 3x3 grid touches 2x2 cells
    path = tmp_path / "aoi.gpkg"
    path.write_bytes(client.get(record["download_url"]).content)
    assert pyogrio.read_info(path)["crs"] == "EPSG:3857"
    to_wgs84 = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    objects = read_objects(path)
    assert objects
    for _, geometry in objects:
        x, y = to_wgs84.transform(*geometry.representative_point().coords[0])
        assert aoi.buffer(1e-9).contains(shapely.Point(x, y))


def test_bad_export_requests_start_nothing(served, tmp_path):
    client, image, detector = served
    url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
    before = len(client.get("/api/exports").json())
    west, south, east, north = image["bounds_wgs84"]
    far = shapely.geometry.box(west + 10, south, east + 10, north)
    bowtie = {
        "type": "Polygon",
        "coordinates": [
            [[west, south], [east, north], [east, south], [west, north], [west, south]]
        ],
    }
    cases = [
        ({"format": "shp"}, "unknown export format"),
        ({"format": "gpkg", "aoi": shapely.geometry.mapping(far)}, "does not overlap"),
        ({"format": "gpkg", "aoi": bowtie}, "invalid"),
        ({"format": "gpkg", "aoi": {"type": "Point", "coordinates": [west, south]}}, "Polygon"),
        ({"format": "gpkg", "aoi": {"type": "Polygon"}}, "not a GeoJSON polygon"),
        ({"format": "gpkg", "crs": "EPSG:999999"}, "unknown CRS"),
    ]
    for body, message in cases:
        response = client.post(url, json=body)
        assert response.status_code == 422, (body, response.text)
        assert message in response.json()["detail"], (body, response.text)
    # A one-band image cannot feed an RGB detector.
    dem = upload(client, write_dem_tif(tmp_path / "dem.tif"))
    response = client.post(
        f"/api/detectors/{detector['id']}/images/{dem['id']}/exports", json={"format": "gpkg"}
    )
    assert response.status_code == 422 and "band" in response.json()["detail"]
    assert (
        client.post(f"/api/detectors/nope/images/{image['id']}/exports", json={}).status_code == 404
    )
    assert client.get("/api/exports/nope").status_code == 404
    assert len(client.get("/api/exports").json()) == before
    assert client.get("/healthz").status_code == 200


def test_cancel_stops_an_export_and_it_serves_no_file(served):
    client, image, detector = served
    url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
    export = client.post(url, json={"format": "fgb"}).json()
    cancelled = client.post(f"/api/exports/{export['id']}/cancel")
    assert cancelled.status_code == 200
    record = wait_for_export(client, export["id"])
    assert record["state"] == "cancelled"
    assert record["download_url"] is None
    assert client.get(f"/api/exports/{export['id']}/download").status_code == 409


# Faults ------------------------------------------------------------------------------------


def test_a_cell_that_keeps_failing_is_reported_and_a_resume_completes(
    scene, demo_onnx, reference, tmp_path
):
    source, jobs = _plan(scene[0], demo_onnx, tmp_path / "cells", cell_px=320)
    marker = tmp_path / "fail-this-cell"
    marker.touch()
    broken = jobs[7].cell.id
    jobs = [
        dataclasses.replace(j, fail_marker=str(marker)) if i == 7 else j for i, j in enumerate(jobs)
    ]
    options = SweepOptions(retries=2, backoff_s=0.05)
    out = tmp_path / "out.gpkg"
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        first = run_export(client, "f", source, jobs, out, format_named("gpkg"), None, options)
        assert first.state == "partial"  # never silently short
        assert list(first.sweep.failed) == [broken]
        assert "failure injected" in first.sweep.failed[broken]
        assert first.sweep.retried == 2
        assert len(first.sweep.done) == len(jobs) - 1
        marker.unlink()  # the cause goes away; resuming redoes only that cell
        second = run_export(client, "f2", source, jobs, out, format_named("gpkg"), None, options)
    assert second.state == "done" and not second.sweep.failed
    assert_same_objects(read_objects(out), reference)


@pytest.fixture
def dask_cluster(tmp_path):
    """A `dask scheduler` and two `dask worker` processes on loopback."""
    with dask_processes(tmp_path / "dask.log") as cluster:
        yield cluster


def test_cli_export_on_a_real_scheduler_and_workers(
    dask_cluster, scene, demo_onnx, reference, tmp_path
):
    address, _workers = dask_cluster
    out = tmp_path / "objects.fgb"
    result = subprocess.run(
        [
            str(BIN / "tiledetect"),
            "detect",
            str(demo_onnx),
            str(scene[0]),
            "--out",
            str(out),
            "--scheduler",
            address,
            "--cell-px",
            "320",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert '"state": "done"' in result.stdout
    assert_same_objects(read_objects(out), reference)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # cell files cleaned


def test_a_worker_killed_mid_export_loses_only_its_cell(
    dask_cluster, scene, demo_onnx, reference, tmp_path
):
    address, workers = dask_cluster
    source, jobs = _plan(scene[0], demo_onnx, tmp_path / "work", cell_px=320)
    out = tmp_path / "out.gpkg"
    outcome = {}
    with Client(address) as client:

        def export():
            try:
                outcome["result"] = run_export(client, "k", source, jobs, out, format_named("gpkg"))
            except BaseException as exc:  # reported by the main thread
                outcome["error"] = exc

        thread = threading.Thread(target=export)
        thread.start()
        deadline = time.monotonic() + 120
        while len(list((tmp_path / "work" / "cells").glob("*.json"))) < 3:
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.05)
        busy = [w for w, tasks in client.processing().items() if tasks]
        assert busy, "expected a worker in the middle of a cell"
        info = client.scheduler_info()["workers"]
        victim_name = info[busy[0]]["name"]
        victim = workers[int(str(victim_name)[1:])]
        victim.send_signal(signal.SIGKILL)
        thread.join(timeout=240)
    assert outcome["result"].state == "done"
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert_same_objects(read_objects(out), reference)


def test_a_killed_server_resumes_its_export_on_restart(scene, demo_onnx, tmp_path):
    data = tmp_path / "data"
    os.environ["TILEDETECT_EXPORT_CELL_PX"] = "320"
    try:
        server = start_server(data, tmp_path / "server1.log")
    finally:
        del os.environ["TILEDETECT_EXPORT_CELL_PX"]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        image = upload(http, scene[0])
        with open(demo_onnx, "rb") as handle:
            detector = http.post(
                "/api/detectors/import", files={"file": ("demo.onnx", handle)}
            ).json()
        url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
        export = http.post(url, json={"format": "gpkg"}).json()
        cells = data / "blobs" / "exports" / export["id"] / "cells"
        deadline = time.monotonic() + 120
        while len(list(cells.glob("*.json"))) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    total = http_total = None
    os.environ["TILEDETECT_EXPORT_CELL_PX"] = "320"
    try:
        server = start_server(data, tmp_path / "server2.log")
    finally:
        del os.environ["TILEDETECT_EXPORT_CELL_PX"]
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            record = wait_for_export(http, export["id"])
            assert record["state"] == "done", record
            total = record["cells_total"]
            assert record["cells_done"] == total
            # Cells finished before the kill were kept, not redone.
            for name, mtime in done_before.items():
                assert (cells / name).stat().st_mtime_ns == mtime
            resumed = tmp_path / "resumed.gpkg"
            resumed.write_bytes(http.get(record["download_url"]).content)
            # An undisturbed export of the same image gives the same objects.
            again = wait_for_export(http, http.post(url, json={"format": "gpkg"}).json()["id"])
            http_total = again["cells_total"]
            clean = tmp_path / "clean.gpkg"
            clean.write_bytes(http.get(again["download_url"]).content)
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)
    assert total == http_total
    assert_same_objects(read_objects(resumed), read_objects(clean))
