"""Shared fixtures: GeoTIFFs the tests make themselves, an app on a temporary data dir, and a real
uvicorn server on loopback for clients that speak HTTP (GDAL, OWSLib, the CLI beside a server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from rasterio.transform import from_origin

from server.app import create_app
from server.settings import Settings

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# A 0.3 m UTM image and a 16-bit image in geographic coordinates: two CRSs, two dtypes.
RGB_ORIGIN = (500000.0, 5400000.0)
RGB_GSD = 0.3
DEM_ORIGIN = (15.0, 48.76)
DEM_RES = 0.00002


def rgb_pattern(width: int, height: int) -> np.ndarray:
    """Smooth gradients plus bright squares: JPEG keeps it close, and misplacement shows."""
    yy, xx = np.mgrid[0:height, 0:width]
    red = (xx * 255 // max(width - 1, 1)).astype(np.uint8)
    green = (yy * 255 // max(height - 1, 1)).astype(np.uint8)
    blue = np.where(((xx // 128) + (yy // 128)) % 2 == 0, 200, 40).astype(np.uint8)
    return np.stack([red, green, blue])


def write_rgb_tif(path: Path, width: int = 1024, height: int = 1024, **extra) -> Path:
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(*RGB_ORIGIN, RGB_GSD, RGB_GSD),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "photometric": "RGB",
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rgb_pattern(width, height))
    return path


def write_dem_tif(path: Path, width: int = 600, height: int = 400) -> Path:
    """Single-band uint16 with nodata in one corner, like an elevation or thermal product."""
    yy, xx = np.mgrid[0:height, 0:width]
    data = (1000 + 20 * xx + 10 * yy).astype(np.uint16)
    data[:50, :50] = 0
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="uint16",
        crs="EPSG:4326",
        transform=from_origin(*DEM_ORIGIN, DEM_RES, DEM_RES),
        nodata=0,
    ) as dst:
        dst.write(data, 1)
    return path


@pytest.fixture
def rgb_tif(tmp_path: Path) -> Path:
    return write_rgb_tif(tmp_path / "rgb.tif")


@pytest.fixture
def dem_tif(tmp_path: Path) -> Path:
    return write_dem_tif(tmp_path / "dem.tif")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", max_upload_bytes=64 * 1024**2)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def wait_for_job(client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def upload(client, path: Path, name: str | None = None) -> dict:
    """Upload through the API, wait for the ingest job, and return the ready image."""
    with open(path, "rb") as handle:
        params = {"name": name} if name else None
        response = client.post(
            "/api/images", files={"file": (path.name, handle, "image/tiff")}, params=params
        )
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job"]["id"])
    assert job["status"] == "succeeded", job
    image = client.get(f"/api/images/{job['result']['image_id']}").json()
    assert image["status"] == "ready"
    return image


@pytest.fixture
def rgb_image(client, rgb_tif) -> dict:
    return upload(client, rgb_tif)


@pytest.fixture
def dem_image(client, dem_tif) -> dict:
    return upload(client, dem_tif)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    process: subprocess.Popen

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)


def start_server(
    data_dir: Path, log_path: Path, ready_s: float = 60, **settings: str
) -> LiveServer:
    """`tiledetect serve` in a subprocess, as a user would start it; waits for /healthz.
    `settings` are more TILEDETECT_* environment settings, e.g. export_cell_px="256" or
    workers="2"; `ready_s` bounds the wait (several workers import everything side by side)."""
    port = free_port()
    env = {**os.environ, "TILEDETECT_DATA_DIR": str(data_dir)}
    env |= {f"TILEDETECT_{key.upper()}": value for key, value in settings.items()}
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [str(BIN / "tiledetect"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {log_path.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return LiveServer(url, data_dir, process)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"server did not become ready: {log_path.read_text()}")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("live")
    server = start_server(root / "data", root / "server.log")
    try:
        yield server
    finally:
        stop_server(server)


@contextmanager
def dask_processes(log_path: Path, workers: int = 2, env: dict[str, str] | None = None):
    """A `dask scheduler` and `workers` `dask worker` processes (one thread each, named w0, w1,
    ...) on loopback, importing this checkout. No nanny: a killed worker stays dead, as when a
    machine goes away. Yields the scheduler address and the worker processes."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    logs = open(log_path, "wb")  # noqa: SIM115 - closed below
    common = ["--no-dashboard"]
    scheduler = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), *common],
        stdout=logs, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    processes = [
        subprocess.Popen(
            [
                str(BIN / "dask"),
                "worker",
                address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--name",
                f"w{i}",
                *common,
            ],
            stdout=logs,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        for i in range(workers)
    ]
    try:
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=60)
        yield address, processes
    finally:
        for process in [*processes, scheduler]:
            process.kill()
            process.wait()
        logs.close()


def run_cli(*args: str, data_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "tiledetect"), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


# Training budget of the demo detector the detection tests share (trained once per session).
# A fixed step count (not a time budget) so the test detector, and the accuracy floors the tests
# assert, are the same however busy the machine is: about a minute on two idle cores.
TEST_DETECTOR_STEPS = 300


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> dict:
    """The demo detector, trained by the same script `tiledetect demo` runs, for a fixed number
    of steps; returns its path, the training report and the progress values reported."""
    from trainer.demo_detector import build_demo_detector

    path = tmp_path_factory.mktemp("detector") / "demo.onnx"
    seen: list[float] = []
    report = build_demo_detector(path, steps=TEST_DETECTOR_STEPS, seed=0, progress=seen.append)
    return {"path": path, "report": report, "progress": seen}


@pytest.fixture(scope="session")
def demo_onnx(demo_build) -> Path:
    return demo_build["path"]


def write_scene_tif(path: Path, size: int, seed: int, crowding: float = 1.0) -> tuple[Path, Path]:
    """A synthetic scene (the demo's generator, another seed) and its truth GeoJSON;
    `crowding` multiplies the demo's objects per km², so small areas hold many labels."""
    from scenes.synthetic import SceneSpec, write_scene

    base = SceneSpec()
    spec = SceneSpec(
        width=size,
        height=size,
        seed=seed,
        trees_per_km2=crowding * base.trees_per_km2,
        buildings_per_km2=crowding * base.buildings_per_km2,
        cars_per_km2=crowding * base.cars_per_km2,
    )
    truth = path.with_suffix(".geojson")
    write_scene(spec, path, truth)
    return path, truth


# An S3-compatible server on loopback (moto's server mode) for the object-store tests ----------

_S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")
_S3_ENV += ("AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING")


@dataclass
class S3Server:
    endpoint: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def make_bucket(self) -> str:
        import uuid

        bucket = f"tiledetect-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto's S3 (`moto_server`) on a free loopback port; the standard AWS_* variables point
    every client (obstore, GDAL through the store's options, boto3, subprocesses) at it.

    A process of its own, not moto's in-process thread: GDAL holds a lock of its HTTP cache
    while waiting for a reply, and a server thread needing this process's GIL to send that
    reply can deadlock with a second reading thread.
    """
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    saved = {name: os.environ.get(name) for name in _S3_ENV}
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, process)
        os.environ.update(
            AWS_ACCESS_KEY_ID="tiledetect-test",
            AWS_SECRET_ACCESS_KEY="tiledetect-test-secret",
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=endpoint,
        )
        yield S3Server(endpoint)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
