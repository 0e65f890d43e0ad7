"""Faults with real processes: the server SIGKILLed while it ingests, trains and exports, then
restarted on the same data; a Dask worker SIGKILLed during a training; a full disk (a real
ENOSPC from a small tmpfs) while a COG or an export is written; and the catalogue checked
against the files after each (nothing half-written served or listed, no orphans)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import onnx
import pyogrio
import pytest
import rasterio
from fastapi.testclient import TestClient
from shapely.geometry import shape
from sqlalchemy import select

from catalog.db import Database
from catalog.models import (
    DetectorVersionRecord,
    ExportRecord,
    ExportState,
    ImageRecord,
    ImageStatus,
    JobRecord,
    JobStatus,
)
from scenes.annotations import annotations_from_truth
from server.app import create_app
from server.routers.training import ATTACHMENTS
from server.settings import Settings
from tests.conftest import dask_processes, start_server, upload, write_rgb_tif, write_scene_tif
from tests.test_export_seams import GEOREFS
from tests.test_export_seams import write_scene as write_painted_scene
from tests.test_training import areas

CELL_PX = "384"  # the painted scene in 4 x 4 cells


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 1024 px crowded synthetic scene and its truth: what the trainings learn from."""
    folder = tmp_path_factory.mktemp("faults-scene")
    return write_scene_tif(folder / "scene.tif", 1024, seed=31, crowding=4)


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    """The seam tests' painted scene and its exact colour detector (no training needed): what
    the exports run."""
    return write_painted_scene(tmp_path_factory.mktemp("faults-painted"), GEOREFS[0])


def annotations_for(scene, image: dict) -> dict:
    truth = json.loads(scene[1].read_text())
    return annotations_from_truth(
        truth, image["crs"], image_id=image["id"], classes=["tree", "building"], **areas(image)
    )


def trainable_detector(http, scene, image: dict) -> dict:
    detector = http.post("/api/detectors", json={"name": "t", "classes": ["tree", "building"]})
    assert detector.status_code == 201, detector.text
    detector = detector.json()
    saved = http.put(
        f"/api/detectors/{detector['id']}/annotations", json=annotations_for(scene, image)
    )
    assert saved.status_code == 200, saved.text
    return detector


def import_detector(http, onnx_path: Path) -> dict:
    with open(onnx_path, "rb") as handle:
        response = http.post("/api/detectors/import", files={"file": ("demo.onnx", handle)})
    assert response.status_code == 201, response.text
    return response.json()


def poll(what, until, timeout: float = 180, every: float = 0.1):
    """Calls `what()` until `until(value)` holds; returns the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s; last value: {value}")
        time.sleep(every)


def finished_job(http, job_id: str, timeout: float = 300) -> dict:
    return poll(
        lambda: http.get(f"/api/jobs/{job_id}").json(),
        lambda job: job["status"] in JobStatus.FINISHED,
        timeout,
    )


def finished_export(http, export_id: str, timeout: float = 300) -> dict:
    return poll(
        lambda: http.get(f"/api/exports/{export_id}").json(),
        lambda record: record["state"] not in ExportState.UNFINISHED,
        timeout,
        every=0.2,
    )


def assert_consistent(data_dir: Path) -> None:
    """The catalogue and the files agree, as after a clean recovery: no job left queued or
    running, every ready image's COG opens and reads, every version's ONNX file (and a trained
    one's report) is complete, every done export's file reads, nothing in the blob store that no
    record owns, no staging file, no upload and no training folder left behind."""
    blobs = data_dir / "blobs"
    db = Database(f"sqlite:///{data_dir / 'tiledetect.db'}")
    try:
        with db.transaction() as session:
            images = list(session.scalars(select(ImageRecord)))
            versions = list(session.scalars(select(DetectorVersionRecord)))
            exports = list(session.scalars(select(ExportRecord)))
            jobs = list(session.scalars(select(JobRecord)))
    finally:
        db.dispose()
    assert [j.id for j in jobs if j.status not in JobStatus.FINISHED] == []
    for job in jobs:
        if job.status == JobStatus.FAILED:
            assert job.error, job.id  # failed with a reason
    for image in images:
        assert image.status == ImageStatus.READY, image.id
        with rasterio.open(blobs / image.cog_key) as dataset:
            assert dataset.read(1, window=((0, 64), (0, 64))).size
            for level in dataset.overviews(1):
                assert level > 1
    image_dirs = (
        {p.name for p in (blobs / "images").iterdir()} if (blobs / "images").is_dir() else set()
    )
    assert image_dirs == {i.id for i in images}
    for image in images:
        assert {p.name for p in (blobs / "images" / image.id).iterdir()} == {f"{image.id}.tif"}
    owned = set()
    for version in versions:
        model = onnx.load(str(blobs / version.onnx_key))
        assert model.graph.node, version.id
        owned.add(version.onnx_key)
        if version.source == "train":
            folder = f"detectors/{version.detector_id}/{version.id}"
            report = json.loads((blobs / folder / "report.json").read_text())
            assert report["annotation_revision"] == version.annotation_revision
            owned |= {f"{folder}/{name}" for name in ATTACHMENTS}
    stored = (
        {str(p.relative_to(blobs)) for p in (blobs / "detectors").rglob("*") if p.is_file()}
        if (blobs / "detectors").is_dir()
        else set()
    )
    assert stored == owned
    for record in exports:
        folder = blobs / "exports" / record.id
        results = sorted(folder.glob("result.*")) if folder.is_dir() else []
        if record.state in (ExportState.DONE, ExportState.PARTIAL):
            assert [str(p.relative_to(blobs)) for p in results] == [record.result_key]
            assert (
                pyogrio.read_info(results[0], force_feature_count=True)["features"]
                == record.objects
            )
        else:
            assert results == [], record.id
    export_dirs = (
        {p.name for p in (blobs / "exports").iterdir()} if (blobs / "exports").is_dir() else set()
    )
    assert export_dirs <= {r.id for r in exports}
    staging = [
        str(p) for p in data_dir.rglob("*") if ".partial" in p.name or p.name.startswith("tmp")
    ]
    assert staging == []
    uploads = data_dir / "uploads"
    assert not uploads.is_dir() or list(uploads.iterdir()) == []
    training = blobs / "training"
    assert not training.is_dir() or list(training.iterdir()) == []


def kill(server) -> None:
    server.process.send_signal(signal.SIGKILL)
    assert server.process.wait(timeout=30) == -signal.SIGKILL


def stop(server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


# The server killed mid-work ---------------------------------------------------------------------


def test_server_killed_while_ingesting_training_and_exporting_recovers_truthfully(
    scene, painted, tmp_path
):
    """SIGKILL while an ingest converts a COG and a training trains, restart on the same data
    dir: both failed with a reason, no image or version is left of them. SIGKILL again while an
    export sweeps its cells, restart: it resumes and finishes. After each restart the catalogue
    agrees with the files, and at the end the detector trains again."""
    data = tmp_path / "data"
    big = write_rgb_tif(tmp_path / "big.tif", 6144, 6144)  # tens of seconds to convert
    server = start_server(data, tmp_path / "server1.log", export_cell_px=CELL_PX)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            image = upload(http, scene[0])
            exported = upload(http, painted.tif)
            imported = import_detector(http, painted.onnx)
            trainable = trainable_detector(http, scene, image)
            train = http.post(f"/api/detectors/{trainable['id']}/train", json={"seconds": 600})
            assert train.status_code == 202, train.text
            train = train.json()
            poll(
                lambda: http.get(f"/api/jobs/{train['id']}").json(),
                lambda job: (job["result"] or {}).get("step", 0) >= 1,
            )
            with open(big, "rb") as handle:
                posted = http.post("/api/images", files={"file": ("big.tif", handle)})
            assert posted.status_code == 202, posted.text
            ingest = posted.json()["job"]
            poll(
                lambda: http.get(f"/api/jobs/{ingest['id']}").json(),
                lambda job: job["status"] == "running" and job["progress"] > 0.01,
                every=0.05,
            )
            assert http.get(f"/api/jobs/{train['id']}").json()["status"] == "running"
    finally:
        kill(server)
    blobs = data / "blobs"
    # Left behind: the half-converted COG, the training's folder, the upload being ingested.
    assert list((blobs / "images" / ingest["image_id"]).iterdir())
    assert list((blobs / "training").iterdir()) and list((data / "uploads").iterdir())

    server = start_server(data, tmp_path / "server2.log", export_cell_px=CELL_PX)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            job = http.get(f"/api/jobs/{ingest['id']}").json()
            assert job["status"] == "failed" and "before the COG was complete" in job["error"]
            assert http.get(f"/api/images/{ingest['image_id']}").status_code == 404
            listed = {i["id"] for i in http.get("/api/images").json()}
            assert listed == {image["id"], exported["id"]}
            job = http.get(f"/api/jobs/{train['id']}").json()
            assert job["status"] == "failed" and "no version was published" in job["error"]
            assert http.get(f"/api/detectors/{trainable['id']}/versions").json() == []
            assert_consistent(data)
            export = http.post(
                f"/api/detectors/{imported['id']}/images/{exported['id']}/exports",
                json={"format": "gpkg"},
            ).json()
            during = poll(
                lambda: http.get(f"/api/exports/{export['id']}").json(),
                lambda record: record["cells_done"] >= 1,
                every=0.02,
            )
            assert during["state"] == "running" and during["cells_done"] < during["cells_total"]
    finally:
        kill(server)

    server = start_server(data, tmp_path / "server3.log", export_cell_px=CELL_PX)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            record = finished_export(http, export["id"])
            assert record["state"] == "done", record
            assert record["cells_done"] == record["cells_total"]
            assert record["objects"] >= 20
            assert_consistent(data)
            # Still fully working: the detector trains.
            retrain = http.post(f"/api/detectors/{trainable['id']}/train", json={"steps": 5})
            job = finished_job(http, retrain.json()["id"])
            assert job["status"] == "succeeded", job
            assert job["result"]["version"] == 1 and job["result"]["annotation_revision"] == 1
    finally:
        stop(server)
    assert_consistent(data)


# A Dask worker killed during a training ----------------------------------------------------------


@pytest.mark.parametrize("allowed_failures", ["1", "0"], ids=["retried", "given-up"])
def test_a_worker_killed_during_training(scene, tmp_path, allowed_failures):
    """The training's worker SIGKILLed mid-training, on a real scheduler with two workers. With
    a retry allowed, the scheduler reruns it on the other worker and the job says so and
    publishes one version; with none (allowed-failures 0) the job fails naming the lost worker
    and publishes nothing. Never stuck `running`."""
    env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": allowed_failures}
    with dask_processes(tmp_path / "dask.log", workers=2, env=env) as (address, workers):
        data = tmp_path / "data"
        server = start_server(data, tmp_path / "server.log", dask_scheduler=address)
        try:
            with httpx.Client(base_url=server.url, timeout=120) as http:
                image = upload(http, scene[0])
                detector = trainable_detector(http, scene, image)
                url = f"/api/detectors/{detector['id']}"
                started = http.post(f"{url}/train", json={"seconds": 15})
                assert started.status_code == 202, started.text
                job_id = started.json()["id"]
                running = poll(
                    lambda: http.get(f"/api/jobs/{job_id}").json(),
                    lambda job: (job["result"] or {}).get("step", 0) >= 1,
                )
                first = running["result"]["attempts"][0]
                victim = workers[int(first["name"][1:])]
                victim.send_signal(signal.SIGKILL)
                assert victim.wait(timeout=10) == -signal.SIGKILL
                job = finished_job(http, job_id)
                versions = http.get(f"{url}/versions").json()
                if allowed_failures == "1":
                    assert job["status"] == "succeeded", job
                    names = [a["name"] for a in job["result"]["attempts"]]
                    assert names[0] == first["name"] and len(names) == 2 and names[1] != names[0]
                    assert job["result"]["report"]["attempts"] == 2
                    assert [v["number"] for v in versions] == [1]
                    model = http.get(f"{url}/versions/1/model.onnx")
                    assert onnx.load_from_string(model.content).graph.node
                else:
                    assert job["status"] == "failed"
                    assert "worker running this training died" in job["error"]
                    assert first["name"] in job["error"] and "no version" in job["error"]
                    assert versions == []
                assert http.get("/healthz").status_code == 200
        finally:
            stop(server)
    assert_consistent(data)


# Disk full ------------------------------------------------------------------------------------


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real, small filesystem (tmpfs) mounted at `path`: writes past `size` fail with ENOSPC.
    Needs root, as CI has (`make test` runs as root)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, f"mounting a tmpfs needs root: {mounted.stderr}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Take all the free space of `disk` but `leave` bytes, with one more file."""
    filler = disk / f"filler-{len(list(disk.glob('filler-*')))}"
    with open(filler, "wb") as handle:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def disk_usage(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def test_disk_full_while_writing_a_cog(tmp_path):
    """The blob store's images/ on a 64 MiB tmpfs: an ingest that cannot write its COG fails with
    a disk-full error, leaves nothing, and the server keeps serving the images it has; once
    space is freed the same upload goes through."""
    settings = Settings(data_dir=tmp_path / "data")
    with (
        small_disk(settings.blob_dir / "images", "64m") as disk,
        TestClient(create_app(settings)) as client,
    ):
        small = upload(client, write_rgb_tif(tmp_path / "small.tif", 512, 512))
        filler = fill(disk, leave=64 * 1024)
        big = write_rgb_tif(tmp_path / "big.tif", 3072, 3072)
        with open(big, "rb") as handle:
            response = client.post("/api/images", files={"file": ("big.tif", handle)})
        assert response.status_code == 202
        job = finished_job(client, response.json()["job"]["id"])
        assert job["status"] == "failed"
        assert "disk is full" in job["error"], job["error"]
        assert [i["id"] for i in client.get("/api/images").json()] == [small["id"]]
        assert sorted(p.name for p in disk.iterdir()) == sorted([small["id"], filler.name])
        assert [p.name for p in (disk / small["id"]).iterdir()] == [f"{small['id']}.tif"]
        assert client.get(f"/api/images/{small['id']}/preview.png").status_code == 200
        assert client.get(f"/api/images/{small['id']}/info").status_code == 200
        assert client.get("/healthz").status_code == 200
        filler.unlink()
        again = upload(client, big)
        assert again["status"] == "ready"
        assert_consistent(settings.data_dir)


def test_disk_full_while_writing_an_export(painted, tmp_path):
    """exports/ on a tmpfs. With room for the cells but not the output, the export fails at the
    merge with a disk-full error; with no room at all its cells fail with it. Neither leaves a
    result or a half-written file, downloads answer 409, tiles keep serving, and once space is
    freed both resume to a complete file."""
    settings = Settings(
        data_dir=tmp_path / "data", export_cell_px=768, export_retries=1, export_backoff_s=0.05
    )
    with (
        small_disk(settings.blob_dir / "exports", "16m") as disk,
        TestClient(create_app(settings)) as client,
    ):
        image = upload(client, painted.tif)
        detector = import_detector(client, painted.onnx)
        url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
        reference = finished_export(client, client.post(url, json={"format": "gpkg"}).json()["id"])
        assert reference["state"] == "done" and reference["cells_total"] == 4
        assert reference["objects"] >= 20  # the painted objects (through a JPEG COG)
        cells = disk_usage(disk / reference["id"] / "cells")
        outputs = disk_usage(disk / reference["id"]) - cells
        assert outputs > 2 * cells  # the output needs much more room than the cells

        fill(disk, leave=cells + 32 * 1024)
        at_merge = finished_export(client, client.post(url, json={"format": "gpkg"}).json()["id"])
        assert at_merge["state"] == "failed", at_merge
        assert "disk is full" in at_merge["error"], at_merge["error"]
        assert at_merge["cells_done"] == at_merge["cells_total"]

        fill(disk)  # now nothing is free
        at_cells = finished_export(client, client.post(url, json={"format": "gpkg"}).json()["id"])
        assert at_cells["state"] == "failed", at_cells
        assert "disk is full" in at_cells["error"] and "cells failed" in at_cells["error"]
        assert at_cells["failures"] and all(
            "No space left" in error for error in at_cells["failures"].values()
        )

        for record in (at_merge, at_cells):
            assert record["download_url"] is None
            assert client.get(f"/api/exports/{record['id']}/download").status_code == 409
            folder = disk / record["id"]
            assert not list(folder.glob("result.*")) and not list(folder.rglob(".*partial*"))
        layer = (
            f"/api/detectors/{detector['id']}/images/{image['id']}/WebMercatorQuad/tilejson.json"
        )
        assert client.get(layer).status_code == 200
        assert client.get(f"/api/images/{image['id']}/preview.png").status_code == 200

        for path in disk.glob("filler-*"):
            path.unlink()
        for record in (at_merge, at_cells):
            assert client.post(f"/api/exports/{record['id']}/resume").status_code == 200
            resumed = finished_export(client, record["id"])
            assert resumed["state"] == "done", resumed
            assert resumed["objects"] == reference["objects"]
        assert_consistent(settings.data_dir)


# Concurrency ----------------------------------------------------------------------------------


def thinned_accuracy_labels(collection: dict) -> tuple[dict, int]:
    """The collection with every other label of its accuracy area removed, and how many went."""
    accuracy = [
        shape(f["geometry"])
        for f in collection["features"]
        if f["properties"].get("role") == "accuracy_area"
    ]
    features, removed, seen = [], 0, 0
    for feature in collection["features"]:
        props = feature["properties"]
        inside = props.get("role") in (None, "label") and any(
            area.contains(shape(feature["geometry"]).representative_point()) for area in accuracy
        )
        if inside:
            seen += 1
            if seen % 2 == 0:
                removed += 1
                continue
        features.append(feature)
    return {**collection, "features": features}, removed


def test_two_trainings_at_once_and_annotations_edited_meanwhile(scene, tmp_path):
    """Two trainings of one detector started together, the annotations replaced while they run,
    then a third training: all three end, versions are numbered 1, 2, 3 without a gap or a
    duplicate, and each version (record, job, report.json, metrics) names and scores the
    annotation revision it was started on, not the edit."""
    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        image = upload(client, scene[0])
        detector = trainable_detector(client, scene, image)
        url = f"/api/detectors/{detector['id']}"
        first = client.post(f"{url}/train", json={"steps": 10}).json()
        second = client.post(f"{url}/train", json={"steps": 10}).json()
        poll(
            lambda: client.get(f"/api/jobs/{first['id']}").json(),
            lambda job: job["status"] == "running",
        )
        edited, removed = thinned_accuracy_labels(client.get(f"{url}/annotations").json())
        assert removed > 0
        saved = client.put(f"{url}/annotations", json=edited)
        assert saved.status_code == 200 and saved.json()["revision"] == 2
        third = client.post(f"{url}/train", json={"steps": 10}).json()
        jobs = {
            revision: finished_job(client, job["id"])
            for revision, job in (("1a", first), ("1b", second), ("2", third))
        }
        for job in jobs.values():
            assert job["status"] == "succeeded", job
        versions = client.get(f"{url}/versions").json()
        assert [v["number"] for v in versions] == [1, 2, 3]
        assert len({v["id"] for v in versions}) == 3
        by_number = {v["number"]: v for v in versions}
        labels = {}
        for name, job in jobs.items():
            revision = int(name[0])
            version = by_number[job["result"]["version"]]
            assert job["result"]["annotation_revision"] == version["annotation_revision"]
            assert version["annotation_revision"] == revision
            report = client.get(f"{url}/versions/{version['number']}/report.json").json()
            assert report["annotation_revision"] == revision
            assert report["metrics"] == version["metrics"] == job["result"]["metrics"]
            labels.setdefault(revision, set()).add(version["metrics"]["labels"])
        # Both revision-1 versions scored revision 1's accuracy labels; the third the thinned set.
        assert len(labels[1]) == 1 and len(labels[2]) == 1
        assert labels[2].pop() < labels[1].pop()
    assert_consistent(settings.data_dir)


def test_version_files_no_version_records_are_removed_once_old(painted, tmp_path):
    """What a process killed between copying a version's files and recording it leaves: removed
    by the start-up sweep once older than the grace period; a recorded version's files, and
    young files a live process may be about to record, are kept."""
    from catalog.blobstore import LocalBlobStore
    from catalog.detectors import ORPHAN_GRACE_S, DetectorCatalog
    from inference.session import load_detector

    blobs = LocalBlobStore(tmp_path / "blobs")
    db = Database(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        catalog = DetectorCatalog(db, blobs)
        detector = catalog.create("d", ["roof", "pool"])
        version = catalog.add_version(detector.id, painted.onnx, load_detector(painted.onnx).spec)
        folder = blobs.path(f"detectors/{detector.id}")
        old = time.time() - ORPHAN_GRACE_S - 60
        planted = {
            "unrecorded.onnx": old,
            "unrecorded/report.json": old,
            ".x.onnx.1234abcd.partial": old,
            "young.onnx": time.time(),
        }
        for name, mtime in planted.items():
            path = folder / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"half")
            os.utime(path, (mtime, mtime))
        os.utime(folder / "unrecorded", (old, old))
        gone_detector = blobs.path("detectors/deleted-detector/v.onnx")
        gone_detector.parent.mkdir()
        gone_detector.write_bytes(b"x")
        os.utime(gone_detector, (old, old))

        removed = catalog.remove_orphans()
        assert sorted(removed) == sorted(
            [
                f"{detector.id}/unrecorded.onnx",
                f"{detector.id}/unrecorded",
                f"{detector.id}/.x.onnx.1234abcd.partial",
                "deleted-detector/v.onnx",
            ]
        )
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [f"{version.id}.onnx", "young.onnx"]
        )
        assert not gone_detector.parent.exists()
        assert catalog.version(detector.id).id == version.id
    finally:
        db.dispose()
