"""The catalogue on a real PostgreSQL server (TILEDETECT_DATABASE_URL), started on loopback."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.conftest import free_port, upload


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"{name} not found: `make test` installs Debian's postgresql (scripts/sysdeps.sh)"
    return found[-1]


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; CI runs as root, a developer usually does not."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    root = Path(f"/tmp/tiledetect-pg-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run(
        _as_postgres([_pg_bin("initdb"), "-D", str(data), "-U", "tiledetect", "-A", "trust"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        _as_postgres(
            [_pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w"]
            + ["start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://tiledetect@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


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
