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
DEMO_DETECTOR_NAME = "demo: trees, buildings, cars"
DEMO_TRAINING_SECONDS = 90.0
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
    detector_id: str | None = None
    trained: bool = False


def demo_files(services: Services) -> DemoFiles:
    return DemoFiles(services.settings.data_dir / "demo")


def ensure_demo(
    services: Services,
    spec: SceneSpec,
    *,
    force: bool = False,
    progress: Progress | None = None,
    detector_seconds: float | None = DEMO_TRAINING_SECONDS,
) -> DemoResult:
    """Generate the scene if missing or from another spec; ingest it if not in the catalogue;
    train and register the demo detector if missing (`detector_seconds=None` skips it)."""
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

    detector_id, trained = manifest.get("detector_id"), False
    if detector_seconds is not None and (force or not _has_version(services, detector_id)):
        detector_id = _train_demo_detector(services, files, detector_seconds, report)
        trained = True
        manifest["detector_id"] = detector_id
        _write_manifest(files, manifest)
    counts = manifest.get("counts", {})
    return DemoResult(image_id, files, generated, ingested, counts, detector_id, trained)


def _has_version(services: Services, detector_id: str | None) -> bool:
    if not detector_id:
        return False
    try:
        services.detectors.version(detector_id)
    except NotFoundError:
        return False
    return True


def _train_demo_detector(
    services: Services, files: DemoFiles, seconds: float, report: Progress
) -> str:
    """Train with trainer/demo_detector.py (reproducible from its seed) and register it."""
    from inference.session import load_detector
    from trainer.demo_detector import build_demo_detector

    onnx_path = files.directory / "demo-detector.onnx"
    metrics = build_demo_detector(
        onnx_path, seconds=seconds, progress=lambda f: report("training demo detector", f)
    )
    metrics = json.loads(json.dumps(metrics, default=float))  # numpy scalars -> JSON column
    detector_spec = load_detector(onnx_path).spec
    record = services.detectors.create(DEMO_DETECTOR_NAME, list(detector_spec.class_names))
    services.detectors.add_version(
        record.id, onnx_path, detector_spec, metrics=metrics, source="trainer/demo_detector.py"
    )
    return record.id


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
