"""The catalogue on a real PostgreSQL server (TILEDETECT_DATABASE_URL), started on loopback; and
that server stopped and started again under the running app: requests answer 503 meanwhile,
nothing is half-written, the app recovers by itself, and a training's or an export's result
finished on Dask meanwhile is recorded once the database is back."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import morecantile
import psycopg
import pytest
from fastapi.testclient import TestClient

from catalog.images import _RESOLVE_TTL_SECONDS
from scenes.annotations import annotations_from_truth
from server.app import create_app
from server.settings import Settings
from tests.conftest import free_port, upload, write_scene_tif
from tests.test_export_seams import GEOREFS
from tests.test_export_seams import write_scene as write_painted_scene
from tests.test_training import areas


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"{name} not found: `make test` installs Debian's postgresql (scripts/sysdeps.sh)"
    return found[-1]


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; CI runs as root, a developer usually does not."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


class Postgres:
    """A throwaway PostgreSQL cluster on loopback, which tests may stop and start again (its data
    directory kept), as an outage or a restart of the database server would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        subprocess.run(
            _as_postgres(
                [_pg_bin("initdb"), "-D", str(self.data), "-U", "tiledetect", "-A", "trust"]
            ),
            check=True,
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://tiledetect@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        """Fast shutdown: open transactions are rolled back, clients disconnected."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """A database of its own for a test, so tests sharing the cluster never see each other."""
        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    root = Path(f"/tmp/tiledetect-pg-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = Postgres(root)
    cluster.start()
    try:
        yield cluster
    finally:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(cluster.data), "-m", "fast", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url(postgres) -> str:
    return postgres.url()


@contextmanager
def outage(postgres: Postgres) -> Iterator[None]:
    """PostgreSQL stopped for the body; started again afterwards, whatever the body did."""
    postgres.stop()
    try:
        yield
    finally:
        postgres.start()


def test_catalogue_on_postgresql(postgres_url, tmp_path, rgb_tif, dem_tif):
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json()["database"] == "postgresql"
        rgb = upload(client, rgb_tif, name="on postgres")
        dem = upload(client, dem_tif)
        listing = client.get("/api/images").json()
        assert [(i["id"], i["name"]) for i in listing] == [
            (rgb["id"], "on postgres"),
            (dem["id"], "dem.tif"),
        ]
        assert rgb["statistics"]["b1"]["max"] >= 250  # JSON metadata round-trips
        tilejson = client.get(f"/api/images/{rgb['id']}/WebMercatorQuad/tilejson.json").json()
        assert tilejson["maxzoom"] == rgb["maxzoom"]
        bad = client.post("/api/images", files={"file": ("x.tif", b"not a tiff")})
        assert bad.status_code == 422
        assert client.delete(f"/api/images/{dem['id']}").status_code == 204
        assert [i["id"] for i in client.get("/api/images").json()] == [rgb["id"]]

    # A second app on the same database sees the same catalogue (as a second worker would).
    with TestClient(create_app(settings)) as client:
        assert [i["id"] for i in client.get("/api/images").json()] == [rgb["id"]]


# The database unavailable for a while ------------------------------------------------------------


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    detail = response.json()["detail"]
    assert detail.startswith("the catalogue database is unavailable (") and (
        "nothing was changed; retry in a few seconds" in detail
    ), detail
    assert "127.0.0.1" not in detail and "tiledetect@" not in detail  # no address, no URL
    assert int(response.headers["retry-after"]) > 0


def post_image(client, path: Path):
    with open(path, "rb") as handle:
        return client.post("/api/images", files={"file": (path.name, handle, "image/tiff")})


def center_tile(image: dict) -> str:
    west, south, east, north = image["bounds_wgs84"]
    z = image["maxzoom"]
    at = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, z)
    return f"/api/images/{image['id']}/tiles/WebMercatorQuad/{z}/{at.x}/{at.y}.png"


class Load:
    """Listing requests from a few threads, for as long as it runs; records every status."""

    def __init__(self, client, threads: int = 2) -> None:
        self.client = client
        self.statuses: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.statuses.append(self.client.get("/api/images").status_code)
            except BaseException as exc:  # a 500 is raised by the TestClient
                self.errors.append(exc)
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def test_database_outage_answers_503_and_the_app_recovers(postgres, tmp_path, rgb_tif, dem_tif):
    data = tmp_path / "data"
    settings = Settings(data_dir=data, database_url=postgres.create_database("outage"))
    with TestClient(create_app(settings)) as client, Load(client) as load:
        image = upload(client, rgb_tif)
        tile = center_tile(image)
        assert client.get(tile).status_code == 200
        with outage(postgres):
            assert_unavailable(client.get("/api/images"))
            assert_unavailable(client.get(f"/api/images/{image['id']}"))
            assert_unavailable(client.post("/api/detectors", json={"name": "d", "classes": ["a"]}))
            # The upload was received and validated, but could not be recorded: its file is gone.
            assert_unavailable(post_image(client, dem_tif))
            assert list((data / "uploads").iterdir()) == []
            assert [p.name for p in (data / "blobs" / "images").iterdir()] == [image["id"]]
            # A tile resolves its image in the catalogue (cached for a few seconds): once the
            # cache has lapsed it cannot, and says so.
            time.sleep(_RESOLVE_TTL_SECONDS + 0.5)
            assert_unavailable(client.get(tile))
            assert client.get("/healthz").status_code == 200  # the process itself is fine
            during = len(load.statuses)

        # Started again, under the same app: the same requests succeed, no restart needed.
        listing = client.get("/api/images")
        assert listing.status_code == 200
        assert [i["id"] for i in listing.json()] == [image["id"]]  # the failed upload left nothing
        assert [j["kind"] for j in client.get("/api/jobs").json()] == ["ingest"]
        assert client.get("/api/detectors").json() == []
        assert client.get(tile).status_code == 200
        assert (
            client.post("/api/detectors", json={"name": "d", "classes": ["a"]}).status_code == 201
        )
        dem = upload(client, dem_tif)
        assert [i["id"] for i in client.get("/api/images").json()] == [image["id"], dem["id"]]
        time.sleep(0.5)
    # Under load every request got an answer: 200 before and after, 503 meanwhile, never a 500.
    assert load.errors == []
    assert set(load.statuses) == {200, 503} and len(load.statuses) > during
    assert list((data / "uploads").iterdir()) == []


def test_a_training_finished_during_an_outage_is_published_when_the_database_is_back(
    postgres, tmp_path, caplog
):
    scene, truth = write_scene_tif(tmp_path / "scene.tif", 512, seed=31, crowding=4)
    data = tmp_path / "data"
    settings = Settings(data_dir=data, database_url=postgres.create_database("training"))
    with TestClient(create_app(settings)) as client:
        image = upload(client, scene)
        classes = ["tree", "building"]
        detector = client.post("/api/detectors", json={"name": "t", "classes": classes}).json()
        collection = annotations_from_truth(
            json.loads(truth.read_text()),
            image["crs"],
            image_id=image["id"],
            classes=classes,
            **areas(image),
        )
        url = f"/api/detectors/{detector['id']}"
        assert client.put(f"{url}/annotations", json=collection).status_code == 200
        job = client.post(f"{url}/train", json={"steps": 10}).json()
        work = data / "blobs" / "training" / job["id"]
        started = poll(
            lambda: client.get(f"/api/jobs/{job['id']}").json(),
            until=lambda job: job["status"] != "queued",
        )
        assert started["status"] == "running", started

        with outage(postgres):
            # The Dask task finishes meanwhile, and the trained model waits for the database to
            # be published.
            # (generous: a loaded 2-core machine takes minutes to load, train and score)
            poll(lambda: waits_for_database(caplog, f"training {job['id']}"), timeout=400)
            time.sleep(1.0)
            assert_unavailable(client.get(f"/api/jobs/{job['id']}"))
            assert (work / "model.onnx").is_file()  # kept until it is published

        finished = poll(
            lambda: client.get(f"/api/jobs/{job['id']}").json(),
            until=lambda job: job["status"] in ("succeeded", "failed"),
        )
        assert finished["status"] == "succeeded", finished
        assert finished["result"]["version"] == 1
        versions = client.get(f"{url}/versions").json()
        assert [(v["number"], v["source"]) for v in versions] == [(1, "train")]
        assert client.get(f"{url}/versions/1/model.onnx").status_code == 200
        poll(lambda: not work.exists())  # the training's folder goes once it is recorded


def test_an_export_run_through_an_outage_records_its_result_when_the_database_is_back(
    postgres, tmp_path, caplog
):
    (tmp_path / "painted").mkdir()
    painted = write_painted_scene(tmp_path / "painted", GEOREFS[0])
    data = tmp_path / "data"
    settings = Settings(
        data_dir=data, database_url=postgres.create_database("export"), export_cell_px=384
    )
    with TestClient(create_app(settings)) as client:
        image = upload(client, painted.tif)
        with open(painted.onnx, "rb") as handle:
            imported = client.post("/api/detectors/import", files={"file": ("c.onnx", handle)})
        detector = imported.json()
        url = f"/api/detectors/{detector['id']}/images/{image['id']}/exports"
        export = client.post(url, json={"format": "gpkg"}).json()
        started = poll(
            lambda: client.get(f"/api/exports/{export['id']}").json(),
            until=lambda record: record["state"] != "queued",
        )
        assert started["state"] == "running", started
        with outage(postgres):
            # The cells run on Dask and are merged meanwhile (progress unrecorded); the merged
            # file then waits for the database to check the export is still this process's and
            # to record it.
            poll(lambda: waits_for_database(caplog, f"export {export['id']}"))
            time.sleep(1.0)
            assert_unavailable(client.get(f"/api/exports/{export['id']}"))

        done = poll(
            lambda: client.get(f"/api/exports/{export['id']}").json(),
            until=lambda record: record["state"] not in ("queued", "running"),
        )
        assert done["state"] == "done", done
        assert done["cells_done"] == done["cells_total"] == 16 and done["objects"] >= 20
        assert client.get(f"/api/exports/{export['id']}/download").status_code == 200


def waits_for_database(caplog, what: str) -> bool:
    """Whether `what` (background work) has logged that it waits for the database."""
    return any(f"{what} waits for the database" in r.getMessage() for r in caplog.records)


def poll(what, until=bool, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"condition not met in {timeout} s: {value}"
        time.sleep(0.1)
