"""`tiledetect serve --workers 2` on loopback: two uvicorn processes share one port, one Dask
scheduler (run by the parent) and one catalogue. Requests land on either process; an export runs
once and its record stays consistent; after the whole server is SIGKILLed, the restarted
server's two processes, starting at once, resume the unfinished export exactly once.

The detector is the seam test's exact colour classifier, so the painted objects are the result.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import morecantile
import psutil
import pyogrio
import pytest

from catalog.db import Database
from catalog.exports import ExportStore
from catalog.jobs import JobStore
from catalog.models import (
    DetectorRecord,
    DetectorVersionRecord,
    ExportRecord,
    ExportState,
    ImageRecord,
    JobRecord,
    JobStatus,
)
from catalog.owners import process_owner
from inference.metrics import match_objects
from tests.conftest import LiveServer, start_server, stop_server, upload
from tests.test_export_seams import CELL_PX, GEOREFS, Scene, write_scene

WORKERS = 2
READY_S = 240  # two processes importing GDAL, onnxruntime and torch side by side on 2 cores


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Scene:
    return write_scene(tmp_path_factory.mktemp("workers-scene"), GEOREFS[0])


def serve(data: Path, log: Path, **settings: str) -> LiveServer:
    return start_server(
        data, log, ready_s=READY_S, workers=str(WORKERS), export_cell_px=str(CELL_PX), **settings
    )


def worker_pids(server: LiveServer) -> set[int]:
    """The server's worker processes (uvicorn spawns them; the resource tracker is not one)."""
    children = psutil.Process(server.process.pid).children()
    return {p.pid for p in children if "spawn_main" in " ".join(p.cmdline())}


def answering_pids(server: LiveServer, want: int, timeout: float = 120) -> set[int]:
    """Pids that answer /healthz on fresh connections, until `want` different ones have."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        response = httpx.get(server.url + "/healthz", timeout=30)
        if response.status_code == 200:
            seen.add(response.json()["pid"])
    return seen


def kill_all(server: LiveServer) -> None:
    """SIGKILL the server's parent (with its Dask scheduler and worker) and every worker."""
    parent = psutil.Process(server.process.pid)
    victims = [parent, *parent.children(recursive=True)]
    for process in victims:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)


def import_detector(http: httpx.Client, scene: Scene) -> dict:
    with open(scene.onnx, "rb") as handle:
        response = http.post("/api/detectors/import", files={"file": ("colours.onnx", handle)})
    assert response.status_code == 201, response.text
    return response.json()


def wait_state(http: httpx.Client, export_id: str, states, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = http.get(f"/api/exports/{export_id}").json()
        if record["state"] in states:
            return record
        time.sleep(0.2)
    raise AssertionError(f"export {export_id} never reached {states}: {record}")


def test_two_workers_serve_one_catalogue_and_run_an_export_once(scene, tmp_path):
    data = tmp_path / "data"
    server = serve(data, tmp_path / "server.log")
    try:
        assert len(worker_pids(server)) == WORKERS
        assert answering_pids(server, WORKERS) == worker_pids(server)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            # Uploaded through one process, its job polled and the image read through both.
            image = upload(http, scene.tif)
            detector = import_detector(http, scene)
            tilejson = http.get(f"/api/images/{image['id']}/WebMercatorQuad/tilejson.json")
            assert tilejson.status_code == 200
            z, x, y = _centre_tile(tilejson.json())
            tile = f"/api/images/{image['id']}/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
            bodies = set()
            for _ in range(8):  # fresh connections: both processes draw it, identically
                response = httpx.get(server.url + tile, timeout=60)
                assert response.status_code == 200, response.text
                bodies.add(response.content)
            assert len(bodies) == 1

            url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
            export = http.post(url, json={"format": "gpkg"})
            assert export.status_code == 202, export.text
            record = wait_state(http, export.json()["id"], ("done", "partial", "failed"))
            assert record["state"] == "done", record
            assert record["cells_done"] == record["cells_total"] == 16
            result = tmp_path / "result.gpkg"
            result.write_bytes(http.get(record["download_url"]).content)
            found = pyogrio.read_dataframe(result)
            assert len(found) == record["objects"]
            # Every painted object found whole across the cell borders (the ingested COG is
            # JPEG, whose ringing adds a few specks the exact colour detector also reports).
            for cls in ("roof", "pool"):
                mine = list(found.geometry[found["class"] == cls])
                truth = [scene.truth(o) for o in scene.objects if o.cls == cls]
                assert match_objects(mine, truth, min_iou=0.8).false_negatives == 0, cls
            # Both processes tell the same story.
            views = [httpx.get(f"{server.url}/api/exports", timeout=30).json() for _ in range(6)]
            for listed in views:
                assert [(e["id"], e["state"], e["objects"]) for e in listed] == [
                    (record["id"], "done", record["objects"])
                ]
    finally:
        stop_server(server)
    log = (tmp_path / "server.log").read_text()
    # One scheduler for both workers, and no process found anything to recover.
    assert log.count("Dask scheduler for the workers at tcp://127.0.0.1:") == 1
    assert "unfinished export" not in log and "interrupted job" not in log


def _centre_tile(tilejson: dict) -> tuple[int, int, int]:
    west, south, east, north = tilejson["bounds"]
    zoom = tilejson["maxzoom"]
    t = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, zoom)
    return zoom, t.x, t.y


def test_a_killed_server_resumes_its_export_once_across_workers(scene, tmp_path):
    data = tmp_path / "data"
    # No worker declares a GPU: the exports wait, unfinished, until the server is killed.
    server = serve(data, tmp_path / "server1.log", dask_cell_resources="GPU=1")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        image = upload(http, scene.tif)
        detector = import_detector(http, scene)
        url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
        kept = http.post(url, json={"format": "fgb"}).json()
        dropped = http.post(url, json={"format": "geojson"}).json()
        wait_state(http, kept["id"], ("running",))
        wait_state(http, dropped["id"], ("running",))
        # Cancelled through whichever process gets the request, not necessarily the driver.
        assert http.post(f"/api/exports/{dropped['id']}/cancel").status_code == 200
        assert wait_state(http, dropped["id"], ("cancelled",), timeout=60)["cells_done"] == 0
    kill_all(server)
    store = ExportStore(Database(f"sqlite:///{(data / 'tiledetect.db').resolve()}"))
    assert store.get(kept["id"]).state == ExportState.RUNNING

    server = serve(data, tmp_path / "server2.log")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            record = wait_state(http, kept["id"], ("done", "partial", "failed"))
            assert record["state"] == "done", record
            assert record["cells_done"] == record["cells_total"] == 16
            assert record["objects"] >= len(scene.objects)
            assert http.get(f"/api/exports/{dropped['id']}").json()["state"] == "cancelled"
            pids = worker_pids(server)
    finally:
        stop_server(server)
    log = (tmp_path / "server2.log").read_text()
    # Both processes looked at it as they started; exactly one claimed and drove it.
    assert log.count("resuming 1 unfinished export(s)") == 1, log
    assert "adopted" not in log
    owner = store.get(kept["id"]).owner
    assert int(owner.split(":")[1]) in pids


def test_an_orphan_is_claimed_by_exactly_one_of_many_at_once(tmp_path):
    """The claims behind start-up recovery, raced by threads: one wins each orphan."""
    db = Database(f"sqlite:///{tmp_path / 'race.db'}")
    dead = "elsewhere:7:1"  # another host's process whose lease lapsed long ago
    with db.transaction() as session:
        image = ImageRecord(name="i")
        detector = DetectorRecord(name="d", classes=["c"])
        session.add_all([image, detector])
        session.flush()
        version = DetectorVersionRecord(
            detector_id=detector.id, number=1, onnx_key="k", onnx_bytes=1, spec={}
        )
        session.add(version)
        session.flush()
        export = ExportRecord(
            detector_id=detector.id,
            version_id=version.id,
            version_number=1,
            image_id=image.id,
            format="gpkg",
            state=ExportState.RUNNING,
            owner=dead,
        )
        job = JobRecord(kind="ingest", status=JobStatus.RUNNING, owner=dead, image_id=image.id)
        session.add_all([export, job])
    exports, jobs = ExportStore(db), JobStore(db)
    record = exports.get(export.id)
    assert exports.orphaned(record, lease_s=60)
    won: dict[str, list[bool]] = {"job": [], "export": []}
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        won["export"].append(exports.claim(record))
        won["job"].append(jobs.fail_orphan(job.id, dead, "interrupted"))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won["export"]) == sorted(won["job"]) == [False] * 7 + [True]
    assert jobs.get(job.id).status == JobStatus.FAILED
    claimed = exports.get(export.id)
    assert claimed.owner == process_owner() and not exports.orphaned(claimed, lease_s=60)
