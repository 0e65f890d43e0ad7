"""Registering an existing COG by URL (POST /api/images/remote), against real servers on loopback:
a range-capable HTTP server (uvicorn + Starlette StaticFiles, which GDAL's /vsicurl/ reads) and
moto's S3. Only allow-listed hosts are ever contacted: everything else (hosts not listed, odd
schemes, credentials in the URL, redirects to another host) is refused before GDAL sees it, with a
reason, and nothing is recorded. A registered COG serves tiles equal to the uploaded one and
deleting it removes only the record."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from catalog.errors import RemoteCogRefusedError
from catalog.remote import InvalidRemoteUrlError, parse_remote_url
from server.app import create_app
from server.settings import Settings
from tests.conftest import REPO, free_port, upload, wait_for_port, write_rgb_tif
from tests.test_object_storage import decode, tile_path
from tiles.cog import write_cog
from tiles.source import inspect_source

pytestmark = pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning")


@dataclass
class FileServer:
    url: str
    port: int

    @property
    def hits(self) -> list[str]:
        return httpx.get(f"{self.url}/_hits", timeout=10).json()


@contextmanager
def serve(folder: Path, log: Path, redirect_to: str = "") -> Iterator[FileServer]:
    """tests/file_server.py in a uvicorn process on a free loopback port (a process of its own,
    as a real origin is: GDAL must never wait on a server that needs this process's GIL)."""
    port = free_port()
    env = {**os.environ, "TD_FILES_DIR": str(folder), "TD_REDIRECT_TO": redirect_to}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.file_server:create", "--factory"]
            + ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env,
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, process)
            yield FileServer(f"http://127.0.0.1:{port}", port)
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("remote-files")
    source = write_rgb_tif(folder / "source.tif")
    cog = folder / "www" / "scene.tif"
    cog.parent.mkdir()
    write_cog(source, cog, inspect_source(source))
    striped = write_rgb_tif(folder / "www" / "striped.tif", tiled=False)
    (folder / "www" / "notes.tif").write_bytes(b"not a raster at all" * 100)
    return {"source": source, "cog": cog, "striped": striped, "www": cog.parent, "root": folder}


@pytest.fixture(scope="module")
def elsewhere(files) -> Iterator[FileServer]:
    """A host that is not on the allow-list (it must never see a request)."""
    with serve(files["www"], files["root"] / "elsewhere.log") as server:
        yield server


@pytest.fixture(scope="module")
def origin(files, elsewhere) -> Iterator[FileServer]:
    """The allowed host: the COGs with ranges, /moved.tif redirecting to `elsewhere`, and
    /whole.tif answering the whole file whatever the Range header says."""
    target = f"{elsewhere.url}/cogs/scene.tif"
    with serve(files["www"], files["root"] / "origin.log", redirect_to=target) as server:
        yield server


@pytest.fixture(scope="module")
def client(tmp_path_factory, origin) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("remote-app") / "data",
        remote_cog_hosts=f"127.0.0.1:{origin.port}, s3://not-this-one",
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def register(client, url: str, name: str | None = None):
    body = {"url": url} | ({"name": name} if name else {})
    return client.post("/api/images/remote", json=body)


def test_registration_is_off_unless_hosts_are_allowed(tmp_path, origin):
    before = len(origin.hits)
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as off:
        response = register(off, f"{origin.url}/cogs/scene.tif")
        assert response.status_code == 403
        assert "TILEDETECT_REMOTE_COG_HOSTS" in response.json()["detail"]
        assert off.get("/api/images").json() == []
    assert len(origin.hits) == before


def test_a_listed_host_serves_a_cog_in_place(client, origin, files, tmp_path):
    response = register(client, f"{origin.url}/cogs/scene.tif", name="remote scene")
    assert response.status_code == 201, response.text
    image = response.json()
    assert image["status"] == "ready" and image["name"] == "remote scene"
    assert image["remote_url"] == f"{origin.url}/cogs/scene.tif"
    assert image["cog_bytes"] == files["cog"].stat().st_size
    assert client.app.state.services.images.cog_path(image["id"]).startswith("/vsicurl?")
    # The same pixels as the same file uploaded and converted here.
    with TestClient(create_app(Settings(data_dir=tmp_path / "local"))) as local:
        uploaded = upload(local, files["source"])
        for zoom in (19, 17):
            remote = client.get(f"/api/images/{image['id']}/{tile_path(image, zoom)}")
            here = local.get(f"/api/images/{uploaded['id']}/{tile_path(uploaded, zoom)}")
            assert remote.status_code == here.status_code == 200, remote.text
            assert np.array_equal(decode(remote.content), decode(here.content))
    # Read in place: only the file itself was asked for (no directory listing, no sidecars).
    assert set(origin.hits) == {"/cogs/scene.tif"}
    # Deleting removes the record only; the file stays where it is.
    assert client.delete(f"/api/images/{image['id']}").status_code == 204
    assert client.get(f"/api/images/{image['id']}").status_code == 404
    assert files["cog"].is_file()


@pytest.mark.parametrize(
    ("url", "status", "says"),
    [
        ("file:///etc/passwd", 422, "scheme"),
        ("/vsicurl/http://127.0.0.1/x.tif", 422, "scheme"),
        ("ftp://127.0.0.1/x.tif", 422, "scheme"),
        ("gopher://127.0.0.1:70/x", 422, "scheme"),
        ("http://user:secret@{host}/cogs/scene.tif", 422, "credentials"),
        ("http://{host}@127.0.0.1:9/cogs/scene.tif", 422, "credentials"),
        ("http://{host}/cogs/scene.tif?x=1", 422, "query"),
        ("http://{host}/cogs/../scene.tif", 422, "path"),
        ("http://{host}/", 422, "name a file"),
        ("http://localhost:{port}/cogs/scene.tif", 403, "allow-list"),
        ("http://127.0.0.1/cogs/scene.tif", 403, "allow-list"),
        ("http://127.0.0.1:{other}/cogs/scene.tif", 403, "allow-list"),
        ("http://127.0.0.1:99999/cogs/scene.tif", 422, "cannot be parsed"),
        ("s3://some-bucket/scene.tif", 403, "allow-list"),
    ],
)
def test_urls_refused_before_any_request(client, origin, url, status, says):
    before = len(origin.hits)
    other = origin.port + 1 if origin.port < 65535 else origin.port - 1
    url = url.format(host=f"127.0.0.1:{origin.port}", port=origin.port, other=other)
    response = register(client, url)
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert len(origin.hits) == before  # judged on the URL alone
    assert client.get("/api/images").json() == []


def test_a_redirect_to_another_host_is_not_followed(client, origin, elsewhere):
    response = register(client, f"{origin.url}/moved.tif")
    assert response.status_code == 403, response.text
    detail = response.json()["detail"]
    assert "redirect" in detail and elsewhere.url in detail
    assert elsewhere.hits == []
    assert client.get("/api/images").json() == []


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/whole.tif", "Range"),
        ("/cogs/striped.tif", "not a Cloud-Optimized GeoTIFF"),
        ("/cogs/notes.tif", "not a raster"),
        ("/cogs/missing.tif", "HTTP 404"),
    ],
)
def test_files_that_cannot_serve_in_place_are_refused(client, origin, path, says):
    response = register(client, f"{origin.url}{path}")
    assert response.status_code == 422, response.text
    assert says in response.json()["detail"]
    assert client.get("/api/images").json() == []


def test_an_s3_cog_on_a_listed_bucket(s3_server, files, tmp_path):
    bucket = s3_server.make_bucket()
    s3_server.client().upload_file(str(files["cog"]), bucket, "area/scene.tif")
    settings = Settings(data_dir=tmp_path / "data", remote_cog_hosts=f"s3://{bucket}")
    with TestClient(create_app(settings)) as client:
        refused = register(client, f"s3://{bucket}x/area/scene.tif")
        assert refused.status_code == 403
        response = register(client, f"s3://{bucket}/area/scene.tif")
        assert response.status_code == 201, response.text
        image = response.json()
        assert client.app.state.services.images.cog_path(image["id"]) == (
            f"/vsis3/{bucket}/area/scene.tif"
        )
        tile = client.get(f"/api/images/{image['id']}/{tile_path(image, 18)}")
        assert tile.status_code == 200 and decode(tile.content)[..., 3].any()
        assert client.delete(f"/api/images/{image['id']}").status_code == 204
    assert s3_server.keys(bucket) == ["area/scene.tif"]  # not ours to delete


def test_parse_remote_url_normalises_and_matches_ports():
    allowed = ("example.org", "data.example.org:8443", "[::1]:9000", "s3://bucket")
    target = parse_remote_url("HTTPS://Example.org/a/b.tif", allowed)
    assert target.url == "https://example.org:443/a/b.tif"
    assert target.gdal_path == "/vsicurl?empty_dir=yes&url=https://example.org:443/a/b.tif"
    assert parse_remote_url("https://data.example.org:8443/x.tif", allowed).host.endswith("8443")
    assert parse_remote_url("http://[::1]:9000/x.tif", allowed).url == "http://[::1]:9000/x.tif"
    assert parse_remote_url("s3://bucket/k/x.tif", allowed).gdal_path == "/vsis3/bucket/k/x.tif"
    for refused in (
        "https://example.org:8443/x.tif",  # a listed host, another port
        "http://example.org:443/x.tif",
        "https://evil.example.org/x.tif",
        "https://example.org.evil.net/x.tif",
        "https://data.example.org/x.tif",
    ):
        with pytest.raises(RemoteCogRefusedError):
            parse_remote_url(refused, allowed)
    for invalid in ("https://example.org/x\\..\\y.tif", "https://example.org/x.tif#f", "x.tif"):
        with pytest.raises(InvalidRemoteUrlError):
            parse_remote_url(invalid, allowed)
