"""Per-project limits on a server several teams share (catalog/quotas.py): trainings and exports
at once (403), storage (403), upload size (413), requests per minute per key (429 with
Retry-After), each naming the limit and the use, with nothing stored; a project's usage through
the API and the CLI; limits off with auth off, on with auth on, and set for one project by
`tiledetect projects limits` on a running server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from scenes.annotations import annotations_from_truth
from server.app import create_app
from server.settings import Settings
from tests.conftest import run_cli, start_server, stop_server, write_rgb_tif, write_scene_tif
from tests.test_access_control import bearer, wait
from tests.test_export_seams import detector_spec, write_detector
from tests.test_training import areas

pytestmark = pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning")


class Team:
    """A project with a key, an image, an imported colour detector and a trainable one."""

    def __init__(self, client: TestClient, root: Path) -> None:
        services = client.app.state.services
        self.client, self.quotas = client, services.quotas
        self.id = services.projects.create("team").id
        _, token = services.keys.create(self.id, "tests")
        self.headers = bearer(token)
        self.tif, truth = write_scene_tif(root / "scene.tif", 768, seed=5, crowding=4)
        self.image = self.upload(self.tif)
        onnx = write_detector(root / "colours.onnx", detector_spec(0.3))
        self.onnx_bytes = onnx.stat().st_size
        with open(onnx, "rb") as handle:
            imported = client.post(
                "/api/detectors/import",
                files={"file": ("colours.onnx", handle, "application/octet-stream")},
                headers=self.headers,
            )
        assert imported.status_code == 201, imported.text
        self.colours = imported.json()["id"]
        created = client.post(
            "/api/detectors", json={"name": "trees", "classes": ["tree"]}, headers=self.headers
        )
        self.trees = created.json()["id"]
        collection = annotations_from_truth(
            json.loads(truth.read_text()),
            self.image["crs"],
            image_id=self.image["id"],
            classes=["tree"],
            **areas(self.image),
        )
        saved = client.put(
            f"/api/detectors/{self.trees}/annotations", json=collection, headers=self.headers
        )
        assert saved.status_code == 200, saved.text

    def upload(self, tif: Path) -> dict:
        response = self.post_file(tif)
        assert response.status_code == 202, response.text
        job = response.json()["job"]["id"]
        wait(lambda: self.get(f"/api/jobs/{job}").json()["status"] == "succeeded", what="ingest")
        return self.get(f"/api/images/{response.json()['image']['id']}").json()

    def post_file(self, tif: Path) -> httpx.Response:
        with open(tif, "rb") as handle:
            return self.client.post(
                "/api/images",
                files={"file": (tif.name, handle, "image/tiff")},
                headers=self.headers,
            )

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path, headers=self.headers)

    def post(self, path: str, body: dict) -> httpx.Response:
        return self.client.post(path, json=body, headers=self.headers)

    def limit(self, **changes) -> None:
        self.quotas.set_limits(self.id, changes, reset=True)

    def export(self) -> httpx.Response:
        return self.post(
            f"/api/detectors/{self.colours}/images/{self.image['id']}/exports",
            {"format": "geojson"},
        )


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    # Auth on, with its default limits; keys and limits checked on every request.
    settings = Settings(data_dir=root / "data", auth=True, auth_cache_seconds=0)
    with TestClient(create_app(settings)) as client:
        team = Team(client, root)
        yield team
        team.limit()


def assert_refused(response: httpx.Response, code: int, limit: str, allowed: int, used: int):
    assert response.status_code == code, response.text
    body = response.json()
    assert (body["limit"], body["allowed"], body["used"]) == (limit, allowed, used), body
    return body["detail"]


def uploads_left(team: Team) -> list[str]:
    folder = team.client.app.state.services.settings.upload_dir
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_limits_are_off_with_auth_off_and_on_with_auth_on(tmp_path, monkeypatch):
    off = Settings(data_dir=tmp_path).project_limits()
    assert set(off.as_dict().values()) == {None}
    on = Settings(data_dir=tmp_path, auth=True).project_limits()
    assert (on.trainings, on.exports, on.requests_per_minute) == (2, 4, 6000)
    assert on.storage_bytes == 500 * 1024**3 and on.upload_bytes is None
    monkeypatch.setenv("TILEDETECT_PROJECT_EXPORTS", "0")  # 0: no limit
    monkeypatch.setenv("TILEDETECT_PROJECT_TRAININGS", "7")
    chosen = Settings(data_dir=tmp_path, auth=True).project_limits()
    assert (chosen.exports, chosen.trainings) == (None, 7)


def test_usage_counts_storage_jobs_and_objects_exported(team):
    before = team.get("/api/project").json()
    assert before["name"] == "team" and before["limits"]["trainings"] == 2
    usage = before["usage"]
    assert usage["images"] == 1 and usage["image_bytes"] == team.image["cog_bytes"] > 0
    assert usage["model_bytes"] == team.onnx_bytes
    started = team.export()
    assert started.status_code == 202, started.text
    export = wait(
        lambda: (
            (e := team.get(f"/api/exports/{started.json()['id']}").json())["state"] == "done" and e
        ),
        what="export",
    )
    after = team.get("/api/project").json()["usage"]
    assert after["exports_finished"] == before["usage"]["exports_finished"] + 1
    assert after["objects_exported"] == usage["objects_exported"] + export["objects"] > 0
    assert after["export_bytes"] > usage["export_bytes"]
    assert after["storage_bytes"] == (
        after["image_bytes"] + after["model_bytes"] + after["export_bytes"]
    )
    # The CLI reads the same catalogue and says the same.
    data_dir = team.client.app.state.services.settings.data_dir
    printed = run_cli("projects", "usage", "team", data_dir=data_dir)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout.splitlines()[-1])["usage"] == after


def test_an_export_over_the_limit_is_refused_and_not_recorded(team):
    team.limit(exports=1)
    first = team.export()
    assert first.status_code == 202, first.text
    count = len(team.get("/api/exports").json())
    detail = assert_refused(team.export(), 403, "exports", 1, 1)
    assert "team" in detail and "exports at once is 1" in detail and "--exports" in detail
    assert len(team.get("/api/exports").json()) == count
    wait(
        lambda: team.get(f"/api/exports/{first.json()['id']}").json()["state"] == "done",
        what="export",
    )
    again = team.export()  # the slot is free again
    assert again.status_code == 202, again.text
    wait(
        lambda: team.get(f"/api/exports/{again.json()['id']}").json()["state"] == "done",
        what="export",
    )
    team.limit()


def test_a_training_over_the_limit_is_refused_and_not_queued(team):
    team.limit(trainings=1)
    url = f"/api/detectors/{team.trees}/train"
    first = team.post(url, {"steps": 2})
    assert first.status_code == 202, first.text
    trainings = [j for j in team.get("/api/jobs").json() if j["kind"] == "train"]
    assert_refused(team.post(url, {"steps": 2}), 403, "trainings", 1, 1)
    assert [j for j in team.get("/api/jobs").json() if j["kind"] == "train"] == trainings
    job = wait(
        lambda: (
            (j := team.get(f"/api/jobs/{first.json()['id']}").json())["status"]
            in ("succeeded", "failed")
            and j
        ),
        timeout=300,
        what="training",
    )
    assert job["status"] == "succeeded", job
    team.limit()


def test_an_upload_over_the_storage_or_upload_limit_stores_nothing(team, tmp_path):
    tif = write_rgb_tif(tmp_path / "more.tif", width=512, height=512)
    images = team.get("/api/images").json()
    used = team.get("/api/project").json()["usage"]["storage_bytes"]

    team.limit(storage_bytes=used + 1000)  # room for less than this file
    detail = assert_refused(team.post_file(tif), 403, "storage_bytes", used + 1000, used)
    assert "storage limit" in detail and "--storage" in detail
    # Sent without a length (chunked): refused once received, and the received file is gone.
    boundary = "limits-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="more.tif"\r\n'
        f"Content-Type: image/tiff\r\n\r\n".encode()
        + tif.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    chunked = team.client.post(
        "/api/images",
        content=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
        headers={**team.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_refused(chunked, 403, "storage_bytes", used + 1000, used)
    assert uploads_left(team) == []

    team.limit(upload_bytes=1000)
    refused = team.post_file(tif)
    assert refused.status_code == 413, refused.text
    body = refused.json()  # the request's size: the file and the form round it
    assert (body["limit"], body["allowed"]) == ("upload_bytes", 1000)
    assert tif.stat().st_size < body["used"] < tif.stat().st_size + 1024
    assert "upload size limit of project 'team'" in body["detail"]
    assert team.get("/api/images").json() == images and uploads_left(team) == []

    team.limit(storage_bytes=used)  # full: a training or an export has no room either
    assert_refused(team.export(), 403, "storage_bytes", used, used)
    assert_refused(
        team.post(f"/api/detectors/{team.trees}/train", {"steps": 2}),
        403,
        "storage_bytes",
        used,
        used,
    )
    team.limit()
    assert team.upload(tif)["status"] == "ready"  # and within its limits, it works


def test_requests_over_the_rate_get_429_with_retry_after(team):
    team.limit(requests_per_minute=8)  # bursts of 2, then one every 7.5 s
    answers = [team.get("/api/images") for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [200, 200]
    assert_refused(answers[2], 429, "requests_per_minute", 8, 8)
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 8
    assert "8 requests per minute" in answers[2].json()["detail"]
    team.limit()  # the defaults again: 6000 a minute refill the spent bucket in 10 ms
    time.sleep(0.1)
    assert team.get("/api/images").status_code == 200


def test_cli_limits_reach_a_running_server(tmp_path):
    data = tmp_path / "data"
    made = run_cli("projects", "create", "field", data_dir=data)
    assert made.returncode == 0, made.stderr
    key = run_cli("keys", "create", "--project", "field", data_dir=data)
    token = key.stdout.strip().splitlines()[-1]
    server = start_server(data, tmp_path / "server.log", auth="true", auth_cache_seconds="1")
    try:
        headers = bearer(token)
        assert server.get("/api/project", headers=headers).json()["limits"]["exports"] == 4
        limited = run_cli(
            "projects",
            "limits",
            "field",
            "--rate",
            "4",
            "--storage",
            "2GiB",
            "--exports",
            "none",
            data_dir=data,
        )
        assert limited.returncode == 0, limited.stderr
        report = json.loads(limited.stdout.splitlines()[-1])
        assert report["own_limits"] == {
            "requests_per_minute": 4,
            "storage_bytes": 2 * 1024**3,
            "exports": None,
        }
        time.sleep(1.5)  # the server's cached limits expire
        statuses = [server.get("/api/images", headers=headers).status_code for _ in range(4)]
        assert statuses[0] == 200 and 429 in statuses, statuses
        bad = run_cli("projects", "limits", "field", "--rate", "fast", data_dir=data)
        assert bad.returncode == 2 and "'fast' is not a whole number" in bad.stderr
        back = run_cli("projects", "limits", "field", "--reset", data_dir=data)
        assert json.loads(back.stdout.splitlines()[-1])["own_limits"] == {}
        time.sleep(1.5)  # the defaults (6000 a minute, 100 a second) are back
        project = server.get("/api/project", headers=headers)
        assert project.status_code == 200, project.text
        assert project.json()["limits"]["requests_per_minute"] == 6000
    finally:
        stop_server(server)
