"""The data location as an s3:// URL, against a real S3-compatible server on loopback (moto's
server mode): ingest puts the COG in the bucket and GDAL reads its blocks there (/vsis3/), tiles
equal the local store's, detection tiles, training, a bulk export (cells and result in the
bucket, download streamed), deletes removing the objects, and `tiledetect ingest` with an s3://
location. Also the store's own contract, run on both kinds of store."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import morecantile
import numpy as np
import onnx
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image

from catalog.blobstore import (
    LocalBlobStore,
    ObjectBlobStore,
    fetch_local,
    gdal_options_for,
    open_blob_store,
)
from scenes.annotations import annotations_from_truth
from server.app import create_app
from server.settings import Settings
from tests.conftest import (
    BIN,
    REPO,
    free_port,
    run_cli,
    upload,
    write_rgb_tif,
    write_scene_tif,
)
from tests.test_export_seams import detector_spec, write_detector
from tests.test_imagery_tiles import centre_tile

pytestmark = pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning")


def tile_path(image: dict, zoom: int, extension: str = "png") -> str:
    tile = centre_tile(image, zoom)
    return f"tiles/WebMercatorQuad/{zoom}/{tile.x}/{tile.y}.{extension}"


def decode(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


# The store's contract, on a directory and on a bucket ------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    s3 = request.getfixturevalue("s3_server")
    return ObjectBlobStore(
        f"s3://{s3.make_bucket()}/some/prefix",
        cache_dir=tmp_path / "cache",
        staging_dir=tmp_path / "staging",
    )


def test_blob_store_contract(store, tmp_path):
    source = tmp_path / "big.bin"
    payload = np.random.default_rng(0).bytes(12 * 1024 * 1024)  # > 5 MB: a multipart upload
    source.write_bytes(payload)
    assert store.put_file(source, "a/big.bin") == len(payload)
    assert source.read_bytes() == payload  # put_file copies
    assert store.put_bytes(b"small", "a/b/small.txt") == 5
    assert store.exists("a/big.bin") and not store.exists("a/nothing")
    assert store.size("a/big.bin") == len(payload) and store.size("nope") is None
    assert store.read_bytes("a/b/small.txt") == b"small"
    assert b"".join(store.stream("a/big.bin")) == payload
    assert store.list("a") == ["a/b/small.txt", "a/big.bin"]
    assert store.local_path("a/big.bin").read_bytes() == payload
    assert fetch_local(store.ref("a/b/small.txt"), tmp_path / "c2").read_bytes() == b"small"
    assert store.copy("a/b/small.txt", "c/copy.txt") == 5
    with pytest.raises(FileNotFoundError):
        store.read_bytes("a/missing")
    with pytest.raises(FileNotFoundError):
        store.local_path("a/missing")
    for bad in ("../escape", "/abs", "a/../../b", ""):
        with pytest.raises(ValueError):
            store.put_bytes(b"x", bad)
    # A child store rooted at a folder sees the same blobs (how export cells are addressed).
    child = open_blob_store(store.ref("a"), cache_dir=tmp_path / "c3")
    assert child.read_bytes("b/small.txt") == b"small"
    store.delete_prefix("a")
    assert store.list("a") == [] and store.list() == ["c/copy.txt"]
    assert not list(tmp_path.glob("staging/*"))  # staging files never linger


def test_gdal_paths_and_options(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    store = ObjectBlobStore("s3://bucket/pre/fix")
    assert store.gdal_path("images/a/a.tif") == "/vsis3/bucket/pre/fix/images/a/a.tif"
    assert store.ref("images/a/a.tif") == "s3://bucket/pre/fix/images/a/a.tif"
    assert gdal_options_for("s3") == {
        "AWS_S3_ENDPOINT": "127.0.0.1:9000",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example.org")
    assert gdal_options_for("s3")["AWS_HTTPS"] == "YES"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert gdal_options_for("s3") == {}  # AWS itself: GDAL's defaults
    gcs = ObjectBlobStore("gs://bucket/pre")  # GCS: the same interface, GDAL's /vsigs/
    assert gcs.gdal_path("images/a.tif") == "/vsigs/bucket/pre/images/a.tif"
    assert gcs.gdal_options() == {}
    with pytest.raises(ValueError, match="unsupported data location"):
        open_blob_store("ftp://host/x")


# The whole server on a bucket ------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory) -> Path:
    """An exact per-pixel colour detector (red roofs, blue pools) at the test image's 0.3 m."""
    return write_detector(tmp_path_factory.mktemp("detector") / "colours.onnx", detector_spec(0.3))


@pytest.fixture(scope="module")
def on_s3(s3_server, tmp_path_factory, detector_file):
    folder = tmp_path_factory.mktemp("s3-app")
    bucket = s3_server.make_bucket()
    tif = write_rgb_tif(folder / "rgb.tif")
    settings = Settings(data_dir=folder / "data", blob_url=f"s3://{bucket}/td", export_cell_px=256)
    with TestClient(create_app(settings)) as client:
        image = upload(client, tif)
        with open(detector_file, "rb") as handle:
            response = client.post(
                "/api/detectors/import", files={"file": ("c.onnx", handle)}, params={"name": "c"}
            )
        assert response.status_code == 201, response.text
        yield {
            "client": client,
            "bucket": bucket,
            "image": image,
            "detector": response.json(),
            "tif": tif,
            "data_dir": folder / "data",
            "s3": s3_server,
        }


def test_ingest_puts_the_cog_in_the_bucket_and_gdal_reads_it_there(on_s3):
    client, image, s3 = on_s3["client"], on_s3["image"], on_s3["s3"]
    key = f"td/images/{image['id']}/{image['id']}.tif"
    assert key in s3.keys(on_s3["bucket"], "td/images/")
    services = client.app.state.services
    path = services.images.cog_path(image["id"])
    assert path == f"/vsis3/{on_s3['bucket']}/{key}"
    with rasterio.open(path) as dataset:  # GDAL, straight from the bucket
        assert dataset.width == 1024 and dataset.overviews(1)
    body = s3.client().get_object(Bucket=on_s3["bucket"], Key=key)["Body"].read()
    assert len(body) == image["cog_bytes"]
    # Nothing of it stays on local disk: no blobs folder, no staging leftovers, no COG copy.
    data_dir = on_s3["data_dir"]
    assert not (data_dir / "blobs").exists()
    assert not [p for p in data_dir.rglob("*.tif")]
    assert not list((data_dir / "staging").glob("*"))


def test_imagery_tiles_equal_the_local_store(on_s3, tmp_path):
    client, image = on_s3["client"], on_s3["image"]
    settings = Settings(data_dir=tmp_path / "local")
    with TestClient(create_app(settings)) as local:
        local_image = upload(local, on_s3["tif"])
        assert local.app.state.services.images.cog_path(local_image["id"]).startswith("/")
        for zoom in (19, 17, 15):
            tile = tile_path(image, zoom)
            remote = client.get(f"/api/images/{image['id']}/{tile}")
            here = local.get(f"/api/images/{local_image['id']}/{tile}")
            assert remote.status_code == here.status_code == 200, remote.text
            assert np.array_equal(decode(remote.content), decode(here.content))
            assert decode(remote.content)[..., 3].any()  # the tile holds image pixels
        info = client.get(f"/api/images/{image['id']}/info").json()
        assert info == local.get(f"/api/images/{local_image['id']}/info").json()
    assert not [p for p in on_s3["data_dir"].rglob("*.tif")]  # read in place, never downloaded


def test_detection_tiles_and_the_model_download(on_s3, detector_file):
    client, image, detector = on_s3["client"], on_s3["image"], on_s3["detector"]
    versions = client.get(f"/api/detectors/{detector['id']}/versions").json()
    version_id = versions[0]["id"]
    key = f"td/detectors/{detector['id']}/{version_id}.onnx"
    assert key in on_s3["s3"].keys(on_s3["bucket"], "td/detectors/")
    model = client.get(f"/api/detectors/{detector['id']}/versions/1/model.onnx")
    assert model.status_code == 200 and model.content == detector_file.read_bytes()
    layer = f"/api/detectors/{detector['id']}/images/{image['id']}"
    url = f"{layer}/{tile_path(image, 19).removesuffix('.png')}"
    overlay = client.get(f"{url}.png")
    assert overlay.status_code == 200, overlay.text
    assert decode(overlay.content)[..., 3].any()  # blue squares are pools
    objects = client.get(f"{url}.geojson").json()
    assert objects["features"] and {f["properties"]["class"] for f in objects["features"]} == {
        "pool"
    }


def test_bulk_export_writes_cells_and_result_to_the_bucket(on_s3):
    client, image, detector = on_s3["client"], on_s3["image"], on_s3["detector"]
    url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
    response = client.post(url, json={"format": "geojson"})
    assert response.status_code == 202, response.text
    export_id = response.json()["id"]
    record = _wait_export(client, export_id)
    assert record["state"] == "done", record
    keys = on_s3["s3"].keys(on_s3["bucket"], f"td/exports/{export_id}/")
    cells = [k for k in keys if "/cells/" in k]
    assert len([k for k in cells if k.endswith(".parquet")]) == record["cells_total"] > 1
    assert len([k for k in cells if k.endswith(".json")]) == record["cells_total"]
    assert f"td/exports/{export_id}/result.geojson" in keys
    assert f"td/exports/{export_id}/objects.gpkg" in keys  # the zoomed-out layer's source
    download = client.get(f"/api/exports/{export_id}/download")
    assert download.status_code == 200
    assert download.headers["content-length"] == str(record["result_bytes"])
    assert "attachment" in download.headers["content-disposition"]
    collection = json.loads(download.content)
    assert len(collection["features"]) == record["objects"] > 0
    # Below the on-the-fly zoom the layer is drawn from the export's objects (a local copy).
    layer = f"/api/detectors/{detector['id']}/images/{image['id']}"
    probe = client.get(f"{layer}/{tile_path(image, 8)}")
    zoom = int(probe.headers["x-tiledetect-minzoom"]) - 1
    tms = morecantile.tms.get("WebMercatorQuad")
    found = 0
    for tile in tms.tiles(*image["bounds_wgs84"], zooms=[zoom]):
        response = client.get(f"{layer}/tiles/WebMercatorQuad/{zoom}/{tile.x}/{tile.y}.geojson")
        assert response.status_code == 200
        assert response.headers["x-tiledetect-source"].startswith("export")
        found += len(response.json()["features"])
    assert found > 0


def _wait_export(client, export_id: str, timeout: float = 240) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(f"/api/exports/{export_id}").json()
        if record["state"] not in ("queued", "running"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"export {export_id} did not finish: {record}")


def test_training_publishes_its_model_to_the_bucket(s3_server, tmp_path):
    from tests.test_training import areas, wait_for_job

    bucket = s3_server.make_bucket()
    tif, truth = write_scene_tif(tmp_path / "scene.tif", 512, seed=31, crowding=4)
    settings = Settings(data_dir=tmp_path / "data", blob_url=f"s3://{bucket}")
    with TestClient(create_app(settings)) as client:
        image = upload(client, tif)
        detector = client.post("/api/detectors", json={"name": "t", "classes": ["tree"]}).json()
        collection = annotations_from_truth(
            json.loads(truth.read_text()),
            image["crs"],
            image_id=image["id"],
            classes=["tree"],
            **areas(image),
        )
        url = f"/api/detectors/{detector['id']}"
        assert client.put(f"{url}/annotations", json=collection).status_code == 200
        response = client.post(f"{url}/train", json={"steps": 8})
        assert response.status_code == 202, response.text
        job, seen = wait_for_job(client, response.json()["id"])
        assert job["status"] == "succeeded", job
        assert seen and "step" in seen[-1]  # progress came through the bucket
        version = client.get(f"{url}/versions").json()[0]
        keys = s3_server.keys(bucket, f"detectors/{detector['id']}/")
        assert f"detectors/{detector['id']}/{version['id']}.onnx" in keys
        assert f"detectors/{detector['id']}/{version['id']}/report.json" in keys
        assert not s3_server.keys(bucket, "training/")  # the work folder is cleaned up
        model = client.get(f"{url}/versions/1/model.onnx")
        assert model.status_code == 200
        assert onnx.load_from_string(model.content).metadata_props
        assert client.get(f"{url}/versions/1/report.json").json()["steps"] == 8
        tile = client.get(f"{url}/images/{image['id']}/{tile_path(image, 18)}")
        assert tile.status_code == 200, tile.text

        # Deleting removes the objects.
        assert client.delete(f"/api/images/{image['id']}").status_code == 204
        assert not s3_server.keys(bucket, f"images/{image['id']}/")
        assert client.delete(url).status_code == 204
        assert not s3_server.keys(bucket, f"detectors/{detector['id']}/")


def test_cli_ingest_into_a_bucket(s3_server, tmp_path):
    bucket = s3_server.make_bucket()
    tif = write_rgb_tif(tmp_path / "cli.tif", width=512, height=512)
    data_dir = tmp_path / "data"
    location = f"s3://{bucket}/cli"
    done = run_cli("ingest", str(tif), "--blob-url", location, data_dir=data_dir)
    assert done.returncode == 0, done.stderr
    image_id = json.loads(done.stdout.strip().splitlines()[-1])["id"]
    assert s3_server.keys(bucket) == [f"cli/images/{image_id}/{image_id}.tif"]
    listed = run_cli("images", "list", "--json", data_dir=data_dir)
    assert json.loads(listed.stdout.splitlines()[0])["status"] == "ready"
    # A server on the same catalogue and bucket serves it.
    settings = Settings(data_dir=data_dir, blob_url=location)
    with TestClient(create_app(settings)) as client:
        image = client.get(f"/api/images/{image_id}").json()
        tile = client.get(f"/api/images/{image_id}/{tile_path(image, 17)}")
        assert tile.status_code == 200
    deleted = run_cli("images", "delete", image_id, "--blob-url", location, data_dir=data_dir)
    assert deleted.returncode == 0, deleted.stderr
    assert s3_server.keys(bucket) == []


def test_export_on_dask_worker_processes(s3_server, tmp_path, detector_file):
    """A `dask scheduler` and a `dask worker` process whose environment has the credentials but
    none of GDAL's endpoint options: the store URL and those options travel with each task."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    gdal_only = ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING")
    env = {k: v for k, v in os.environ.items() if k not in gdal_only} | {"PYTHONPATH": str(REPO)}
    logs = open(tmp_path / "dask.log", "wb")  # noqa: SIM115
    dask = str(BIN / "dask")
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=logs,
            stderr=subprocess.STDOUT,
            env=env,
        ),
        subprocess.Popen(
            [dask, "worker", address, "--nthreads", "2", "--no-nanny", "--no-dashboard"],
            stdout=logs,
            stderr=subprocess.STDOUT,
            env=env,
        ),
    ]
    try:
        with Client(address, timeout="30s") as probe:
            probe.wait_for_workers(1, timeout=60)
        bucket = s3_server.make_bucket()
        settings = Settings(
            data_dir=tmp_path / "data",
            blob_url=f"s3://{bucket}/w",
            dask_scheduler=address,
            export_cell_px=256,
        )
        with TestClient(create_app(settings)) as client:
            image = upload(client, write_rgb_tif(tmp_path / "rgb.tif"))
            with open(detector_file, "rb") as handle:
                detector = client.post(
                    "/api/detectors/import", files={"file": ("c.onnx", handle)}
                ).json()
            url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
            export_id = client.post(url, json={"format": "parquet"}).json()["id"]
            record = _wait_export(client, export_id)
            assert record["state"] == "done", (record, (tmp_path / "dask.log").read_text()[-3000:])
            assert record["objects"] > 0
            keys = s3_server.keys(bucket, f"w/exports/{export_id}/cells/")
            assert len(keys) == 2 * record["cells_total"]
            download = client.get(f"/api/exports/{export_id}/download")
            assert download.status_code == 200
            assert len(download.content) == record["result_bytes"]
    finally:
        for process in processes:
            process.kill()
            process.wait()
        logs.close()
