"""Access control: projects and their API keys.

Two projects, each with its own image, detector (an exact ONNX colour classifier), export and
job, on an app with auth on: every kind of endpoint answers another project's ids with the very
404 a made-up id gets, lists show only the caller's records, keys work as a Bearer header and as
?token=, a revoked, unknown or missing key gets 401. Then a real `tiledetect serve` with auth on,
its keys made and revoked with the CLI, read by GDAL through a token-carrying WMTS document; the
refusal to listen on a non-loopback address with auth off; old catalogues keep opening.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import morecantile
import pytest
import rasterio
from fastapi.testclient import TestClient
from rasterio.io import MemoryFile

from catalog.blobstore import LocalBlobStore
from catalog.db import Database
from catalog.images import ImageCatalog
from catalog.models import DEFAULT_PROJECT
from catalog.projects import ApiKeyStore, ProjectStore
from server.app import create_app
from server.settings import Settings
from tests.conftest import (
    BIN,
    REPO,
    free_port,
    run_cli,
    start_server,
    stop_server,
    write_rgb_tif,
)
from tests.test_export_seams import detector_spec, write_detector

pytestmark = pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning")

MISSING = "0123456789abcdef"  # an id no record has
WEB = morecantile.tms.get("WebMercatorQuad")


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def wait(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def centre_tile(image: dict, zoom: int | None = None) -> morecantile.Tile:
    west, south, east, north = image["bounds_wgs84"]
    return WEB.tile((west + east) / 2, (south + north) / 2, zoom or image["maxzoom"])


class Project:
    """One project's key and records, made through the API with that key."""

    def __init__(self, client: TestClient, name: str, tif: Path, onnx: Path) -> None:
        services = client.app.state.services
        self.id = services.projects.create(name).id
        key, self.token = services.keys.create(self.id, f"{name}-tests")
        self.key_id = key.id
        self.headers = bearer(self.token)
        with open(tif, "rb") as handle:
            accepted = client.post(
                "/api/images",
                files={"file": (tif.name, handle, "image/tiff")},
                headers=self.headers,
            )
        assert accepted.status_code == 202, accepted.text
        self.job = accepted.json()["job"]["id"]
        wait(
            lambda: (
                client.get(f"/api/jobs/{self.job}", headers=self.headers).json()["status"]
                == "succeeded"
            ),
            what="ingest",
        )
        self.image = client.get(
            f"/api/images/{accepted.json()['image']['id']}", headers=self.headers
        ).json()
        with open(onnx, "rb") as handle:
            imported = client.post(
                "/api/detectors/import",
                files={"file": ("colours.onnx", handle, "application/octet-stream")},
                headers=self.headers,
            )
        assert imported.status_code == 201, imported.text
        self.detector = imported.json()["id"]
        started = client.post(
            f"/api/detectors/{self.detector}/images/{self.image['id']}/exports",
            json={"format": "geojson"},
            headers=self.headers,
        )
        assert started.status_code == 202, started.text
        self.export = started.json()["id"]
        wait(
            lambda: (
                client.get(f"/api/exports/{self.export}", headers=self.headers).json()["state"]
                == "done"
            ),
            what="export",
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An auth-on app with projects `alpha` and `beta`, and keys checked on every request."""
    root = tmp_path_factory.mktemp("access")
    tif = write_rgb_tif(root / "rgb.tif", width=768, height=768)
    onnx = write_detector(root / "colours.onnx", detector_spec(0.3))
    settings = Settings(data_dir=root / "data", auth=True, auth_cache_seconds=0)
    with TestClient(create_app(settings)) as client:
        alpha = Project(client, "alpha", tif, onnx)
        beta = Project(client, "beta", tif, onnx)
        yield client, alpha, beta


def endpoints(p: Project, caller: Project) -> list[tuple[str, str, str, dict | None]]:
    """(method, URL, the id of `p` in it that is being tested, JSON body) for every kind of
    endpoint that names a record; detection layers are tried with `p`'s detector on the caller's
    image, and with the caller's detector on `p`'s image."""
    image, detector, export, job = p.image["id"], p.detector, p.export, p.job
    tile = centre_tile(p.image)
    xyz = f"{tile.z}/{tile.x}/{tile.y}"
    foreign_detector = f"/api/detectors/{detector}/images/{caller.image['id']}"
    foreign_image = f"/api/detectors/{caller.detector}/images/{image}"
    return [
        ("GET", f"/api/images/{image}", image, None),
        ("GET", f"/api/images/{image}/info", image, None),
        ("GET", f"/api/images/{image}/statistics", image, None),
        ("GET", f"/api/images/{image}/preview.png", image, None),
        ("GET", f"/api/images/{image}/tiles/WebMercatorQuad/{xyz}.png", image, None),
        ("GET", f"/api/images/{image}/tiles/WebMercatorQuad/{xyz}@2x.png", image, None),
        ("GET", f"/api/images/{image}/WebMercatorQuad/tilejson.json", image, None),
        ("GET", f"/api/images/{image}/WMTSCapabilities.xml", image, None),
        ("GET", f"/api/jobs/{job}", job, None),
        ("GET", f"/api/detectors/{detector}", detector, None),
        ("GET", f"/api/detectors/{detector}/versions", detector, None),
        ("GET", f"/api/detectors/{detector}/versions/1/model.onnx", detector, None),
        ("GET", f"/api/detectors/{detector}/versions/1/report.json", detector, None),
        ("GET", f"/api/detectors/{detector}/annotations", detector, None),
        ("PUT", f"/api/detectors/{detector}/annotations", detector, {"type": "x"}),
        ("POST", f"/api/detectors/{detector}/train", detector, {"steps": 1}),
        ("GET", f"{foreign_detector}/tiles/WebMercatorQuad/{xyz}.png", detector, None),
        ("GET", f"{foreign_image}/tiles/WebMercatorQuad/{xyz}.png", image, None),
        ("GET", f"{foreign_detector}/tiles/WebMercatorQuad/{xyz}.mvt", detector, None),
        ("GET", f"{foreign_image}/tiles/WebMercatorQuad/{xyz}.geojson", image, None),
        ("GET", f"{foreign_detector}/WebMercatorQuad/tilejson.json", detector, None),
        ("GET", f"{foreign_image}/WebMercatorQuad/tilejson.json", image, None),
        ("GET", f"{foreign_detector}/WMTSCapabilities.xml", detector, None),
        ("GET", f"{foreign_image}/WMTSCapabilities.xml", image, None),
        ("POST", f"{foreign_detector}/exports", detector, {"format": "gpkg"}),
        ("POST", f"{foreign_image}/exports", image, {"format": "gpkg"}),
        ("GET", f"/api/exports/{export}", export, None),
        ("GET", f"/api/exports/{export}/download", export, None),
        ("POST", f"/api/exports/{export}/cancel", export, None),
        ("POST", f"/api/exports/{export}/resume", export, None),
        ("DELETE", f"/api/images/{image}", image, None),
        ("DELETE", f"/api/detectors/{detector}", detector, None),
    ]


def call(client, method: str, url: str, body, headers: dict):
    return client.request(method, url, json=body, headers=headers)


def test_another_projects_ids_answer_exactly_like_ids_that_do_not_exist(world):
    client, alpha, beta = world
    for method, url, tested, body in endpoints(alpha, beta):
        foreign = call(client, method, url, body, beta.headers)
        made_up = call(client, method, url.replace(tested, MISSING), body, beta.headers)
        where = f"{method} {url} (id {tested})"
        assert foreign.status_code == 404, (where, foreign.text)
        assert made_up.status_code == 404, (where, made_up.text)
        detail = foreign.json()["detail"]
        assert tested in detail, where  # the message names the id asked for...
        assert detail.replace(tested, MISSING) == made_up.json()["detail"], where  # ...and only
    # Nothing of alpha's was removed, cancelled or changed by beta's attempts.
    tile = centre_tile(alpha.image)
    layer = f"/api/detectors/{alpha.detector}/images/{alpha.image['id']}"
    for url in (
        f"/api/images/{alpha.image['id']}",
        f"/api/images/{alpha.image['id']}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
        f"/api/detectors/{alpha.detector}/versions/1/model.onnx",
        f"{layer}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png",
        f"/api/exports/{alpha.export}/download",
    ):
        assert client.get(url, headers=alpha.headers).status_code == 200, url
    export = client.get(f"/api/exports/{alpha.export}", headers=alpha.headers).json()
    assert export["state"] == "done"


def test_lists_show_only_the_callers_records(world):
    client, alpha, beta = world
    for mine, theirs in ((alpha, beta), (beta, alpha)):
        listings = {
            "images": [i["id"] for i in client.get("/api/images", headers=mine.headers).json()],
            "detectors": [
                d["id"] for d in client.get("/api/detectors", headers=mine.headers).json()
            ],
            "exports": [e["id"] for e in client.get("/api/exports", headers=mine.headers).json()],
            "jobs": [j["id"] for j in client.get("/api/jobs", headers=mine.headers).json()],
        }
        assert listings["images"] == [mine.image["id"]]
        assert listings["detectors"] == [mine.detector]
        assert listings["exports"] == [mine.export]
        assert mine.job in listings["jobs"] and theirs.job not in listings["jobs"]
        wmts = client.get("/wmts/WMTSCapabilities.xml", headers=mine.headers).text
        assert f"image-{mine.image['id']}" in wmts
        assert f"detections-{mine.detector}-{mine.image['id']}" in wmts
        assert theirs.image["id"] not in wmts and theirs.detector not in wmts


def test_annotations_cannot_point_at_another_projects_image(world):
    client, alpha, beta = world
    west, south, east, north = beta.image["bounds_wgs84"]
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    collection = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"image_id": beta.image["id"], "role": "training_area"},
            }
        ],
    }
    response = client.put(
        f"/api/detectors/{alpha.detector}/annotations", json=collection, headers=alpha.headers
    )
    assert response.status_code == 422
    assert f"no image with id {beta.image['id']!r}" in response.json()["detail"]
    stored = client.get(f"/api/detectors/{alpha.detector}/annotations", headers=alpha.headers)
    assert stored.json()["features"] == []


def test_a_key_works_as_bearer_and_as_query_token(world):
    client, alpha, _ = world
    tile = centre_tile(alpha.image)
    url = f"/api/images/{alpha.image['id']}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
    by_header = client.get(url, headers=alpha.headers)
    by_query = client.get(url, params={"token": alpha.token})
    assert by_header.status_code == by_query.status_code == 200
    assert by_header.content == by_query.content
    assert by_header.headers["content-type"] == "image/png"
    # Tiles of a private project must not be kept by shared caches.
    assert by_header.headers["cache-control"].startswith("private")


def test_missing_unknown_malformed_and_revoked_keys_get_401(world):
    client, alpha, _ = world
    url = f"/api/images/{alpha.image['id']}"
    missing = client.get(url)
    assert missing.status_code == 401
    assert "Authorization: Bearer" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == 'Bearer realm="tiledetect"'
    for headers, params in (
        (bearer("tdk_not-a-real-key"), None),
        ({}, {"token": "tdk_not-a-real-key"}),
    ):
        wrong = client.get(url, headers=headers, params=params)
        assert wrong.status_code == 401
        assert wrong.json()["detail"] == "the API key is not valid"
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = client.get(url, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401 and "Bearer <token>" in basic.json()["detail"]
    # The same 401 on every kind of endpoint, whatever the id: nothing is revealed without a key.
    for method, path, _, body in endpoints(alpha, alpha):
        assert call(client, method, path, body, {}).status_code == 401, path
    for path in ("/api/images", "/api/exports", "/wmts/WMTSCapabilities.xml"):
        assert client.get(path).status_code == 401

    services = client.app.state.services
    key, token = services.keys.create(alpha.id, "short-lived")
    assert client.get(url, headers=bearer(token)).status_code == 200
    services.keys.revoke(key.id)
    revoked = client.get(url, headers=bearer(token))
    assert revoked.status_code == 401
    assert revoked.json()["detail"] == f"the API key {key.prefix}... was revoked"
    assert client.get(url, headers=alpha.headers).status_code == 200  # other keys unaffected


def test_health_docs_and_the_web_app_stay_public(world):
    client, _, _ = world
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/static/js/api.js").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def our_urls(document: str) -> list[str]:
    """Every URL of this server in a TileJSON or WMTS document (not XML namespaces)."""
    return [u.replace("&amp;", "&") for u in re.findall(r'http://testserver/[^"<\s]*', document)]


def assert_all_carry(document: str, token: str, at_least: int) -> None:
    urls = our_urls(document)
    assert len(urls) >= at_least, urls
    for url in urls:
        assert parse_qs(urlsplit(url).query).get("token") == [token], url


@pytest.mark.parametrize("way", ["bearer", "query"])
def test_documents_carry_the_token_in_every_url(world, way):
    client, alpha, _ = world
    image, detector = alpha.image["id"], alpha.detector

    def fetch(path: str) -> str:
        if way == "bearer":
            response = client.get(path, headers=alpha.headers)
        else:
            response = client.get(path, params={"token": alpha.token})
        assert response.status_code == 200, (path, response.text)
        return response.text

    documents = {
        f"/api/images/{image}/WebMercatorQuad/tilejson.json": 1,
        f"/api/images/{image}/WMTSCapabilities.xml": 3,
        f"/api/detectors/{detector}/images/{image}/WebMercatorQuad/tilejson.json": 1,
        f"/api/detectors/{detector}/images/{image}/WMTSCapabilities.xml": 2,
        "/wmts/WMTSCapabilities.xml": 4,
    }
    for path, at_least in documents.items():
        assert_all_carry(fetch(path), alpha.token, at_least)
    # A tile URL taken from a TileJSON works as it is, with no header.
    for path in (documents_path for documents_path in documents if "tilejson" in documents_path):
        template = json.loads(fetch(path))["tiles"][0]
        tile = centre_tile(alpha.image)
        url = template.format(z=tile.z, x=tile.x, y=tile.y).removeprefix("http://testserver")
        response = client.get(url)
        assert response.status_code == 200, (url, response.text)
        assert response.headers["content-type"].startswith("image/")


def test_without_a_token_documents_have_plain_urls(tmp_path, rgb_tif):
    """Auth off: one implicit project, no key needed, no token in any URL, public caching."""
    from tests.conftest import upload

    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        image = upload(client, rgb_tif)
        document = client.get("/wmts/WMTSCapabilities.xml").text
        assert our_urls(document) and all("token" not in url for url in our_urls(document))
        services = client.app.state.services
        assert services.images.get(image["id"]).project_id == DEFAULT_PROJECT
        tile = centre_tile(image)
        response = client.get(
            f"/api/images/{image['id']}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
        )
        assert response.headers["cache-control"].startswith("public")


def test_an_old_catalogue_opens_and_its_rows_belong_to_the_default_project(tmp_path):
    """A catalogue made before projects: `project_id` is added, empty, and means `default`."""
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    db = Database(url)
    images = ImageCatalog(db, LocalBlobStore(tmp_path / "blobs"))
    old = images.create_processing("from-before", 10)
    db.dispose()
    with sqlite3.connect(path) as connection:  # back to the table as the old code made it
        for table in ("images", "jobs", "detectors", "exports"):
            connection.execute(f"DROP INDEX ix_{table}_project_id")
            connection.execute(f"ALTER TABLE {table} DROP COLUMN project_id")
        connection.execute("DROP TABLE api_keys")
        connection.execute("DROP TABLE projects")
    db = Database(url)
    try:
        images = ImageCatalog(db, LocalBlobStore(tmp_path / "blobs"))
        assert images.get(old.id, DEFAULT_PROJECT).project_id is None
        assert [i.id for i in images.list(project=DEFAULT_PROJECT)] == [old.id]
        assert images.list(project="someone-else") == []
        with pytest.raises(LookupError):
            images.get(old.id, "someone-else")
    finally:
        db.dispose()


# A real server, the CLI beside it, GDAL as the client ------------------------------------------


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    result = run_cli(*args, data_dir=data_dir)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def test_cli_keys_create_list_revoke_and_only_a_hash_is_stored(tmp_path):
    data = tmp_path / "data"
    project = json.loads(cli(data, "projects", "create", "survey").stdout)
    token = cli(data, "keys", "create", "--project", "survey", "--name", "qgis").stdout.strip()
    assert token.startswith("tdk_") and len(token) > 40
    second = cli(data, "keys", "create", "--project", project["id"]).stdout.strip()
    keys = [json.loads(line) for line in cli(data, "keys", "list").stdout.splitlines()]
    assert [(k["project"], k["name"], k["revoked_at"]) for k in keys] == [
        ("survey", "qgis", None),
        ("survey", "", None),
    ]
    assert keys[0]["prefix"] == token[: len(keys[0]["prefix"])] and len(keys[0]["prefix"]) >= 8
    listing = cli(data, "keys", "list", "--project", "survey").stdout
    assert token not in listing and second not in listing
    database = (data / "tiledetect.db").read_bytes()
    for name in ("tiledetect.db-wal",):
        if (data / name).exists():
            database += (data / name).read_bytes()
    assert token.encode() not in database and second.encode() not in database

    revoked = json.loads(cli(data, "keys", "revoke", keys[0]["id"]).stdout)
    assert revoked["revoked_at"] is not None
    keys = [json.loads(line) for line in cli(data, "keys", "list").stdout.splitlines()]
    assert [k["revoked_at"] is not None for k in keys] == [True, False]
    projects = [json.loads(line) for line in cli(data, "projects", "list").stdout.splitlines()]
    assert [(p["name"], p["active_keys"]) for p in projects] == [("default", 0), ("survey", 1)]

    for args, message in (
        (("keys", "revoke", "nope"), "no API key with id 'nope'"),
        (("keys", "create", "--project", "nope"), "no project 'nope'"),
        (("projects", "create", "survey"), "exists already"),
        (("projects", "create", "two words"), "project name"),
    ):
        result = run_cli(*args, data_dir=data)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-live")
    data = root / "data"
    tif = write_rgb_tif(root / "survey.tif", width=1024, height=1024)
    # Keys through the catalogue here (the CLI's own test makes them with the CLI): each CLI
    # process takes seconds to start on a busy machine.
    data.mkdir()
    db = Database(f"sqlite:///{data.resolve() / 'tiledetect.db'}")
    projects, keys = ProjectStore(db), ApiKeyStore(db)
    _, token = keys.create(projects.create("field").id)
    _, other = keys.create(projects.create("other").id)
    db.dispose()
    image = json.loads(
        cli(data, "ingest", str(tif), "--name", "survey", "--project", "field").stdout.splitlines()[
            -1
        ]
    )
    server = start_server(data, root / "server.log", auth="true")
    try:
        yield server, token, other, image, tif
    finally:
        stop_server(server)


def test_gdal_reads_a_layer_through_the_token_carrying_wmts_document(auth_server):
    server, token, other, image, tif = auth_server
    document = f"{server.url}/wmts/WMTSCapabilities.xml"
    refused = subprocess.run(
        ["gdalinfo", f"WMTS:{document}"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    listed = subprocess.run(
        ["gdalinfo", f"WMTS:{document}?token={token}"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert f"layer=image-{image['id']}" in listed.stdout
    # Another project's key sees a document without that layer.
    theirs = httpx.get(document, params={"token": other}, timeout=30).text
    assert image["id"] not in theirs

    dataset = f"WMTS:{document}?token={token},layer=image-{image['id']}"
    with rasterio.open(dataset) as wmts, rasterio.open(tif) as src:
        assert wmts.crs.to_epsg() == 3857
        window = rasterio.windows.Window(wmts.width // 4, wmts.height // 4, 256, 256)
        served = wmts.read((1, 2, 3), window=window)
        expected = src.read((1, 2, 3), window=rasterio.windows.Window(256, 256, 512, 512))
    assert served.shape == (3, 256, 256)
    # The source's pattern (gradients and a checkerboard), not an empty or error raster.
    assert served.std() > 20
    assert abs(float(served[2].mean()) - float(expected[2].mean())) < 40


def test_a_tilejson_tile_url_works_as_it_is(auth_server):
    server, token, _, image, _ = auth_server
    tilejson = server.get(
        f"/api/images/{image['id']}/WebMercatorQuad/tilejson.json", headers=bearer(token)
    )
    assert tilejson.status_code == 200, tilejson.text
    described = server.get(f"/api/images/{image['id']}", headers=bearer(token)).json()
    tile = centre_tile(described)
    url = tilejson.json()["tiles"][0].format(z=tile.z, x=tile.x, y=tile.y)
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    with MemoryFile(response.content) as memfile, memfile.open() as tile_image:
        pixels = tile_image.read()
    assert pixels.shape in ((3, 256, 256), (3, 512, 512))
    assert pixels.std() > 20  # the image's pattern, not an empty tile


def test_a_key_revoked_with_the_cli_stops_working_on_the_running_server(auth_server):
    server, _, _, image, _ = auth_server
    token = cli(server.data_dir, "keys", "create", "--project", "field").stdout.strip()
    url = f"/api/images/{image['id']}"
    assert server.get(url, headers=bearer(token)).status_code == 200
    key_id = [
        json.loads(line)["id"]
        for line in cli(server.data_dir, "keys", "list", "--project", "field").stdout.splitlines()
    ][-1]
    cli(server.data_dir, "keys", "revoke", key_id)
    # Within the key cache's lifetime (TILEDETECT_AUTH_CACHE_SECONDS, 5 s by default).
    revoked_after = time.monotonic()
    wait(
        lambda: server.get(url, params={"token": token}).status_code == 401,
        timeout=30,
        what="the revoked key to be refused",
    )
    assert time.monotonic() - revoked_after < 15
    assert server.get(url, headers=bearer(token)).json()["detail"].endswith("was revoked")
    # Tokens sent in URLs are not written to the access log.
    log = (server.data_dir.parent / "server.log").read_text()
    assert f"/api/images/{image['id']}?token=[redacted]" in log
    assert token not in log


def test_serve_refuses_a_non_loopback_address_with_auth_off(tmp_path):
    port = free_port()
    env = {**os.environ, "TILEDETECT_DATA_DIR": str(tmp_path / "data")}
    env.pop("TILEDETECT_AUTH", None)
    env.pop("TILEDETECT_ALLOW_UNAUTHENTICATED", None)
    result = subprocess.run(
        [str(BIN / "tiledetect"), "serve", "--host", "0.0.0.0", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "refusing to listen on 0.0.0.0 with auth off" in message
    assert "TILEDETECT_AUTH=true" in message and "--allow-unauthenticated" in message
    with socket.socket() as probe:  # it never started listening
        assert probe.connect_ex(("127.0.0.1", port)) != 0


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/sysdeps.sh)")
def test_the_web_app_asks_for_a_key_then_works(auth_server):
    """In a real browser: the app asks for a key, keeps it, lists the project's image and draws
    its tiles, which carry the key as ?token=; API calls send it as a Bearer header."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    server, token, _, image, _ = auth_server
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader"],
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            answers: list[tuple[str, int, str | None]] = []
            page.on(
                "response",
                lambda r: answers.append((r.url, r.status, r.request.headers.get("authorization"))),
            )
            page.goto(server.url)
            page.locator("#key-form").wait_for(state="visible")
            assert "needs an API key" in page.locator("#key-hint").inner_text()
            page.fill("#key-input", token)
            page.click("#key-save")
            page.locator(f'#images li[data-id="{image["id"]}"]').wait_for()
            assert page.locator("#key-form").is_hidden()
            page.wait_for_function(
                "() => window.tiledetect.map.loaded() && window.tiledetect.map.areTilesLoaded()"
            )
            assert page.evaluate("() => localStorage.getItem('tiledetect.apiKey')") == token
        finally:
            browser.close()
    assert not errors, errors
    tiles = [a for a in answers if f"/api/images/{image['id']}/tiles/" in a[0]]
    assert tiles and all(status == 200 and f"token={token}" in url for url, status, _ in tiles)
    listing = [a for a in answers if a[0].endswith("/api/images") and a[1] == 200]
    assert listing and all(auth == f"Bearer {token}" for _, _, auth in listing)
