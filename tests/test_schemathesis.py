"""Schemathesis against the app's own OpenAPI schema: whatever it generates, no 5xx.

The app runs with its lifespan on a temporary data dir, seeded with a ready image, an imported
detector with one version (the tiny ONNX detector of the hostile corpus, built without torch)
and a detector without versions, so generated requests reach real records, not only 404s: every
`image_id` / `detector_id` path parameter is replaced by a seeded id. Deleting is left out (it
would remove the seeds; tests/test_images_api.py covers it), and so is starting a training (a
real training run per example would not fit the budget; tests/test_training.py covers it).

Bounded for CI: a fixed number of examples per operation, derandomized (the same cases on every
run), no example database (it would write .hypothesis/ into the checkout).
`TILEDETECT_FUZZ_EXAMPLES=N` raises the examples per operation (10 by default; the pixel-reading
operations get 2/5 of it) for a long run: `python -m bench.fuzz_api`.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from server.app import create_app
from server.settings import Settings
from tests import hostile_corpus
from tests.conftest import upload, write_rgb_tif

pytestmark = [
    pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


class Seeded:
    def __init__(self, client: TestClient, image: dict, detector: dict, untrained: dict) -> None:
        self.client = client
        self.image = image
        self.detector = detector
        self.untrained = untrained
        self._detectors = itertools.cycle([detector["id"], detector["id"], untrained["id"]])

    def fill(self, case) -> None:
        """Real ids in the path, so the operations behind the 404 are exercised."""
        params = case.path_parameters or {}
        if "image_id" in params:
            params["image_id"] = self.image["id"]
        if "detector_id" in params:
            params["detector_id"] = next(self._detectors)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Iterator[Seeded]:
    root = tmp_path_factory.mktemp("schemathesis")
    settings = Settings(
        data_dir=root / "data", max_upload_bytes=8 * 1024**2, max_json_bytes=1024**2
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        image = upload(client, write_rgb_tif(root / "rgb.tif", width=512, height=512))
        onnx = hostile_corpus.tiny_detector(root / "tiny.onnx")
        response = client.post(
            "/api/detectors/import", files={"file": ("tiny.onnx", onnx.read_bytes())}
        )
        assert response.status_code == 201, response.text
        untrained = client.post("/api/detectors", json={"name": "empty", "classes": ["car"]})
        assert untrained.status_code == 201, untrained.text
        yield Seeded(client, image, response.json(), untrained.json())


# The schema is read at collection from an app that never starts (no lifespan, no data dir
# written); the cases are sent to the seeded app of the fixture, which has the same routes.
schema = (
    schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(Settings(data_dir=Path(tempfile.gettempdir()) / "unused"))
    )
    .exclude(method="DELETE")
    .exclude(path_regex=r"/train$")
)
# Operations that read and warp pixels over a generated area (up to 4096 px per side) cost
# seconds per example on 2 cores; they get fewer examples than the rest.
HEAVY = r"/api/images/\{image_id\}/(feature|statistics|bbox|preview)"
heavy = schema.include(path_regex=HEAVY)
light = schema.exclude(path_regex=HEAVY)
EXAMPLES = int(os.environ.get("TILEDETECT_FUZZ_EXAMPLES", "10"))
HEAVY_EXAMPLES = max(1, EXAMPLES * 2 // 5)


def bounded(examples: int):
    return hypothesis_settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same cases on every run
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def call_and_check(case, seeded) -> None:
    seeded.fill(case)
    response = case.call(session=seeded.client)
    if response.status_code == 202 and case.path.endswith("/exports"):
        # A real export per example would outlast the budget; starting one is what is tested.
        seeded.client.post(f"/api/exports/{response.json()['id']}/cancel")
    checks = [not_a_server_error]
    if (response.headers.get("content-type") or [""])[0].startswith("application/json"):
        checks.append(response_schema_conformance)
    case.validate_response(response, checks=checks)


@light.parametrize()
@bounded(EXAMPLES)
def test_no_server_errors(case, seeded):
    call_and_check(case, seeded)


@heavy.parametrize()
@bounded(HEAVY_EXAMPLES)
def test_no_server_errors_reading_pixels(case, seeded):
    call_and_check(case, seeded)


def test_the_server_still_serves_the_seeds(seeded):
    """Runs after the generated cases (file order): the seeds are intact and served."""
    client = seeded.client
    assert client.get("/healthz").status_code == 200
    image = client.get(f"/api/images/{seeded.image['id']}").json()
    assert image["status"] == "ready"
    z = image["maxzoom"]
    assert client.get(f"/api/images/{image['id']}/preview.png").status_code == 200
    tilejson = client.get(f"/api/images/{image['id']}/WebMercatorQuad/tilejson.json").json()
    assert tilejson["maxzoom"] == z
    assert client.get(f"/api/detectors/{seeded.detector['id']}").json()["versions"]
