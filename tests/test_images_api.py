"""The catalogue over HTTP: upload, background ingest with a job, list, describe, delete."""

from __future__ import annotations

import threading
import time

from tests.conftest import upload, wait_for_job, write_rgb_tif


def stored_files(settings) -> list[str]:
    return sorted(
        str(p.relative_to(settings.data_dir))
        for root in (settings.blob_dir, settings.upload_dir)
        if root.exists()
        for p in root.rglob("*")
        if p.is_file()
    )


def test_upload_runs_a_job_and_describes_the_image(client, settings, rgb_tif):
    with open(rgb_tif, "rb") as handle:
        response = client.post(
            "/api/images",
            files={"file": ("field survey.tif", handle, "image/tiff")},
        )
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["image"]["status"] == "processing"
    assert accepted["image"]["name"] == "field survey.tif"
    assert accepted["job"]["kind"] == "ingest"

    job = wait_for_job(client, accepted["job"]["id"])
    assert job["status"] == "succeeded"
    assert job["progress"] == 1.0
    image_id = job["result"]["image_id"]
    assert image_id == accepted["image"]["id"]

    image = client.get(f"/api/images/{image_id}").json()
    assert image["status"] == "ready"
    assert (image["width"], image["height"], image["count"], image["dtype"]) == (
        1024,
        1024,
        3,
        "uint8",
    )
    assert image["crs"] == "EPSG:32633"
    assert abs(image["gsd"] - 0.3) < 1e-6
    assert len(image["bounds"]) == 4 and len(image["bounds_wgs84"]) == 4
    assert set(image["statistics"]) == {"b1", "b2", "b3"}
    assert image["links"]["tilejson"].endswith(
        f"/api/images/{image_id}/WebMercatorQuad/tilejson.json"
    )
    # The upload itself is gone once the COG exists; only the COG remains.
    assert stored_files(settings) == [f"blobs/images/{image_id}/{image_id}.tif"]
    assert image["cog_bytes"] > 0


def test_name_parameter_and_listing(client, rgb_tif, dem_tif):
    first = upload(client, rgb_tif, name="orthophoto 2024")
    second = upload(client, dem_tif)
    listing = client.get("/api/images").json()
    assert [(i["id"], i["status"]) for i in listing] == [
        (first["id"], "ready"),
        (second["id"], "ready"),
    ]
    assert listing[0]["name"] == "orthophoto 2024"
    assert [i["id"] for i in client.get("/api/images?status=ready").json()] == [
        first["id"],
        second["id"],
    ]
    assert client.get("/api/images?status=processing").json() == []
    jobs = client.get("/api/jobs").json()
    assert {j["image_id"] for j in jobs} == {first["id"], second["id"]}


def test_image_is_listed_as_processing_until_its_cog_is_complete(client, tmp_path):
    """A large ingest takes a while: meanwhile the image is 'processing' and serves no tiles."""
    big = write_rgb_tif(tmp_path / "big.tif", width=6144, height=6144, compress="deflate")
    with open(big, "rb") as handle:
        accepted = client.post("/api/images", files={"file": ("big.tif", handle)}).json()
    image_id, job_id = accepted["image"]["id"], accepted["job"]["id"]

    # Ingest marks the image ready and then the job succeeded, so each observation reads the
    # image before and after its other requests and counts only if it stayed 'processing'.
    seen_processing = False
    progress_seen: list[float] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        before = client.get(f"/api/images/{image_id}").json()
        if before["status"] == "ready":
            break
        assert before["status"] == "processing"
        job = client.get(f"/api/jobs/{job_id}").json()
        tile = client.get(f"/api/images/{image_id}/tiles/WebMercatorQuad/18/0/0.png")
        after = client.get(f"/api/images/{image_id}").json()
        if after["status"] == "processing":
            seen_processing = True
            assert job["status"] != "succeeded"
            progress_seen.append(job["progress"])
            assert tile.status_code == 409
            assert "still being ingested" in tile.json()["detail"]
        time.sleep(0.05)
    assert seen_processing
    assert progress_seen == sorted(progress_seen)
    assert client.get(f"/api/images/{image_id}").json()["status"] == "ready"
    job_deadline = time.monotonic() + 10
    while client.get(f"/api/jobs/{job_id}").json()["status"] != "succeeded":
        assert time.monotonic() < job_deadline, "the image is ready but its job never finished"
        time.sleep(0.05)


def test_delete_removes_record_and_files(client, settings, rgb_image):
    image_id = rgb_image["id"]
    assert stored_files(settings)
    response = client.delete(f"/api/images/{image_id}")
    assert response.status_code == 204
    assert client.get(f"/api/images/{image_id}").status_code == 404
    assert client.get("/api/images").json() == []
    assert stored_files(settings) == []
    tile = client.get(f"/api/images/{image_id}/tiles/WebMercatorQuad/18/140000/90000.png")
    assert tile.status_code == 404
    assert client.delete(f"/api/images/{image_id}").status_code == 404


def test_uploads_run_concurrently_with_tile_requests(client, rgb_image, tmp_path):
    """The server keeps serving tiles while an ingest runs in the background."""
    other = write_rgb_tif(tmp_path / "other.tif", width=4096, height=4096, compress="deflate")
    result: dict = {}

    def do_upload() -> None:
        result["image"] = upload(client, other)

    worker = threading.Thread(target=do_upload)
    worker.start()
    tilejson = client.get(f"/api/images/{rgb_image['id']}/WebMercatorQuad/tilejson.json")
    assert tilejson.status_code == 200
    worker.join(timeout=120)
    assert result["image"]["status"] == "ready"


def test_healthz(client):
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["database"] == "sqlite"
