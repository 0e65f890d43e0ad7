"""The `tiledetect` command line, run as a user runs it: as a separate process."""

from __future__ import annotations

import json
import subprocess

import morecantile
import rasterio

from tests.conftest import BIN, run_cli, start_server, stop_server, write_rgb_tif


def tiledetect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tiledetect"), *args], capture_output=True, text=True)


def test_help_explains_every_command():
    result = tiledetect("--help")
    assert result.returncode == 0
    for command in ("serve", "ingest", "demo", "images"):
        assert command in result.stdout
    assert "Cloud-Optimized GeoTIFF" in tiledetect("ingest", "--help").stdout
    assert "--port" in tiledetect("serve", "--help").stdout
    assert "--seed" in tiledetect("demo", "--help").stdout


def test_ingest_list_and_delete(tmp_path):
    data_dir = tmp_path / "data"
    source = write_rgb_tif(tmp_path / "ortho.tif", width=512, height=512)
    ingested = run_cli("ingest", str(source), "--name", "ortho", data_dir=data_dir)
    assert ingested.returncode == 0, ingested.stderr
    image = json.loads(ingested.stdout.strip().splitlines()[-1])
    assert image["name"] == "ortho" and image["status"] == "ready"

    listed = run_cli("images", "list", "--json", data_dir=data_dir)
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [image["id"]]
    assert image["id"] in run_cli("images", "list", data_dir=data_dir).stdout

    assert run_cli("images", "delete", image["id"], data_dir=data_dir).returncode == 0
    assert run_cli("images", "list", "--json", data_dir=data_dir).stdout.strip() == ""
    missing = run_cli("images", "delete", image["id"], data_dir=data_dir)
    assert missing.returncode == 1 and "no image with id" in missing.stderr


def test_bad_file_is_refused_and_nothing_stored(tmp_path):
    data_dir = tmp_path / "data"
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    result = run_cli("ingest", str(bad), data_dir=data_dir)
    assert result.returncode == 1
    assert "not a raster file" in result.stderr
    assert run_cli("images", "list", "--json", data_dir=data_dir).stdout.strip() == ""
    assert not list((data_dir / "blobs").rglob("*.tif"))


def test_demo_generates_ingests_and_is_served(tmp_path):
    """`tiledetect demo` (what `make run` calls) on a small scene, then a server shows it."""
    data_dir = tmp_path / "data"
    demo_args = ("demo", "--size", "1024", "--seed", "3", "--detector-seconds", "8")
    first = run_cli(*demo_args, data_dir=data_dir)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert set(summary["counts"]) == {"tree", "building", "car"}
    truth = json.loads((data_dir / "demo" / "truth.geojson").read_text())
    assert len(truth["features"]) == sum(summary["counts"].values())
    with rasterio.open(data_dir / "demo" / "scene.tif") as scene:
        assert (scene.width, scene.height, scene.count) == (1024, 1024, 3)

    assert summary["detector_id"]
    again = run_cli(*demo_args, data_dir=data_dir)
    assert "already present" in again.stderr
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert (second["image_id"], second["detector_id"]) == (
        summary["image_id"],
        summary["detector_id"],
    )

    server = start_server(data_dir, tmp_path / "server.log")
    try:
        images = server.get("/api/images").json()
        assert [(i["id"], i["status"]) for i in images] == [(summary["image_id"], "ready")]
        assert server.get("/").status_code == 200
        assert "maplibre" in server.get("/").text
        assert server.get("/static/vendor/maplibre-gl/maplibre-gl.js").status_code == 200
        # The demo opens with a working detection layer.
        detectors = server.get("/api/detectors").json()
        assert [d["id"] for d in detectors] == [summary["detector_id"]]
        assert detectors[0]["versions"][0]["source"] == "trainer/demo_detector.py"
        layer = f"/api/detectors/{summary['detector_id']}/images/{summary['image_id']}"
        tilejson = server.get(f"{layer}/WebMercatorQuad/tilejson.json").json()
        lon, lat, zoom = tilejson["center"]
        tile = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, zoom)
        overlay = server.get(f"{layer}/tiles/WebMercatorQuad/{zoom}/{tile.x}/{tile.y}.png")
        assert overlay.status_code == 200
        assert overlay.headers["content-type"] == "image/png"
    finally:
        stop_server(server)
