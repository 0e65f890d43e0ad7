"""The demo: a synthetic scene with known objects, generated once and ingested into the catalogue.

Kept under `<data_dir>/demo/` with a manifest, so `make run` after the first time only checks that
the files and the catalogue entry are still there.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from catalog.errors import NotFoundError
from catalog.models import ImageStatus
from scenes.synthetic import SceneSpec, write_scene
from server.services import Services

DEMO_IMAGE_NAME = "demo scene"
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class DemoFiles:
    directory: Path

    @property
    def scene(self) -> Path:
        return self.directory / "scene.tif"

    @property
    def truth(self) -> Path:
        return self.directory / "truth.geojson"

    @property
    def manifest(self) -> Path:
        return self.directory / "manifest.json"


@dataclass(frozen=True)
class DemoResult:
    image_id: str
    files: DemoFiles
    generated: bool
    ingested: bool
    counts: dict[str, int]


def demo_files(services: Services) -> DemoFiles:
    return DemoFiles(services.settings.data_dir / "demo")


def ensure_demo(
    services: Services, spec: SceneSpec, *, force: bool = False, progress: Progress | None = None
) -> DemoResult:
    """Generate the scene if missing or from another spec; ingest it if not in the catalogue."""
    report = progress or (lambda _stage, _fraction: None)
    files = demo_files(services)
    manifest = _read_manifest(files)
    wanted_spec = json.loads(json.dumps(asdict(spec)))  # as the manifest stores it
    previous_id = manifest.get("image_id")
    generated = False
    if force or manifest.get("spec") != wanted_spec or not files.scene.exists():
        files.directory.mkdir(parents=True, exist_ok=True)
        summary = write_scene(
            spec, files.scene, files.truth, progress=lambda f: report("generating scene", f)
        )
        manifest = {"spec": wanted_spec, "counts": summary.counts}
        generated = True

    image_id = previous_id
    ingested = False
    if generated or not _is_ready(services, previous_id):
        ticket = services.ingestor.submit(files.scene, DEMO_IMAGE_NAME)
        services.ingestor.run(ticket, progress=lambda f: report("ingesting", f))
        image_id, ingested = ticket.image_id, True
        if previous_id:  # replaced only once the new one is ready
            _forget(services, previous_id)
    manifest["image_id"] = image_id
    _write_manifest(files, manifest)
    return DemoResult(image_id, files, generated, ingested, manifest.get("counts", {}))


def _is_ready(services: Services, image_id: str | None) -> bool:
    if not image_id:
        return False
    try:
        return services.images.get(image_id).status == ImageStatus.READY
    except NotFoundError:
        return False


def _forget(services: Services, image_id: str) -> None:
    with contextlib.suppress(NotFoundError):
        services.images.delete(image_id)


def _read_manifest(files: DemoFiles) -> dict:
    try:
        return json.loads(files.manifest.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_manifest(files: DemoFiles, manifest: dict) -> None:
    staging = files.manifest.with_suffix(".json.tmp")
    staging.write_text(json.dumps(manifest, indent=2))
    os.replace(staging, files.manifest)
