"""Custom detectors in the server: create one, keep its annotations, train it as a Dask job
and publish each finished training as a new version that the detection layers serve at once."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from distributed import KilledWorker

from catalog.annotations import AnnotationStore
from catalog.blobstore import BlobStore, gdal_options_for_path, open_blob_store
from catalog.db import SkipWhileUnavailable, retry_unavailable
from catalog.detectors import DetectorCatalog
from catalog.errors import JobNotFoundError, failure_reason
from catalog.images import ImageCatalog
from catalog.jobs import TRAIN_JOB, JobStore
from catalog.models import DEFAULT_PROJECT, DetectorRecord, JobRecord, JobStatus
from catalog.names import check_name
from catalog.projects import owner
from catalog.quotas import Quotas
from inference.reading import check_bands
from inference.session import load_detector
from server.detection_layers import DetectionLayers
from server.exports import ExportService
from server.settings import Settings
from trainer.annotations import AnnotationError, Annotations, label_warnings, parse_annotations
from trainer.data import ImageSource
from trainer.job import TrainingTask, read_attempts, read_progress, run_training, write_report
from trainer.prefill import prefill_labels
from trainer.train import TrainingRequest

log = logging.getLogger("tiledetect.training")

T = TypeVar("T")

TRAINING_PREFIX = "training"  # blob-store folders of trainings in flight, one per job

MAX_CLASSES = 16
HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


class TrainingService:
    def __init__(
        self,
        settings: Settings,
        detectors: DetectorCatalog,
        annotations: AnnotationStore,
        images: ImageCatalog,
        jobs: JobStore,
        layers: DetectionLayers,
        exports: ExportService,  # owns the Dask client that training shares
        blobs: BlobStore,
        quotas: Quotas,
    ) -> None:
        self.settings = settings
        self.detectors = detectors
        self.annotations = annotations
        self.images = images
        self.jobs = jobs
        self.layers = layers
        self.exports = exports
        self.blobs = blobs
        self.quotas = quotas
        self._threads: dict[str, threading.Thread] = {}

    def create_detector(
        self,
        name: str,
        classes: list[str],
        colors: list[str] | None = None,
        project: str = DEFAULT_PROJECT,
    ) -> DetectorRecord:
        cleaned = [check_name(c, "class name") if c.strip() else "" for c in classes]
        if not cleaned or len(cleaned) > MAX_CLASSES:
            raise AnnotationError(f"a detector needs 1 to {MAX_CLASSES} classes")
        if any(not c or len(c) > 64 for c in cleaned) or len(set(cleaned)) != len(cleaned):
            raise AnnotationError("class names must be distinct, non-empty, at most 64 characters")
        if "background" in cleaned:
            raise AnnotationError('"background" is implicit; it cannot be a class')
        if colors is not None:
            if len(colors) != len(cleaned):
                raise AnnotationError(
                    f"colors has {len(colors)} entries for {len(cleaned)} classes; give one each"
                )
            wrong = [c for c in colors if not HEX_COLOR.fullmatch(c)]
            if wrong:
                raise AnnotationError(f"colours are '#rrggbb' strings; not {wrong[0]!r}")
            colors = [c.lower() for c in colors]
        return self.detectors.create(name.strip() or "detector", cleaned, colors, project)

    # Annotations -------------------------------------------------------------------------------

    def put_annotations(
        self, detector_id: str, collection: Any, project: str | None = None
    ) -> dict:
        """Validate every feature against its image, then replace the stored set."""
        detector = self.detectors.get(detector_id, project)
        parsed = self.parse(detector, collection, require_labels=False)
        counts: dict[str, int] = {}
        for labelled in parsed.values():
            for name, count in labelled.counts().items():
                counts[name] = counts.get(name, 0) + count
        record = self.annotations.put(detector_id, collection, counts)
        warnings = [w.as_dict() for labelled in parsed.values() for w in labelled.warnings]
        return {
            "revision": record.revision,
            "counts": counts,
            "prefilled": _prefilled(collection),
            "images": sorted(parsed),
            "warnings": sorted(warnings, key=lambda w: w["feature"]),
        }

    def prefill(
        self,
        detector_id: str,
        image_id: str,
        area: Any,
        version: int | None = None,
        project: str | None = None,
    ) -> dict:
        """A version's detections inside `area` (a WGS84 polygon, e.g. a new training area), as
        label features to correct and save; the latest version unless one is named."""
        detector = self.detectors.get(detector_id, project)
        image = self.images.get(image_id, owner(detector.project_id))
        if image.meta is None:
            raise AnnotationError(f"image {image_id} is still ingesting")
        collection = {
            "type": "FeatureCollection",
            "features": [
                {"type": "Feature", "properties": {"role": "testing_area"}, "geometry": area}
            ],
        }
        try:
            parsed = parse_annotations(
                collection,
                classes=detector.classes,
                image_crs_wkt=image.meta["crs_wkt"],
                image_bounds=tuple(image.meta["bounds"]),
                require_labels=False,
            )
        except AnnotationError as exc:
            raise AnnotationError(str(exc).replace("feature 0: ", "area: ", 1)) from exc
        record = self.detectors.version(detector_id, version)
        model = self.layers.detector(record)
        check_bands(model.spec, image.meta)
        source = ImageSource(image_id, self.images.cog_path(image_id), image.meta)
        return prefill_labels(model, source, parsed.testing[0], image_id, record.number)

    def get_annotations(self, detector_id: str, project: str | None = None) -> dict:
        self.detectors.get(detector_id, project)
        record = self.annotations.get(detector_id)
        if record is None:
            return {"type": "FeatureCollection", "features": [], "revision": 0}
        return {**record.collection, "revision": record.revision}

    def parse(
        self, detector: DetectorRecord, collection: Any, *, require_labels: bool
    ) -> dict[str, Annotations]:
        """Features grouped by `properties.image_id`, each group validated against its image
        (one of the detector's project: another project's image id is unknown here);
        errors name the feature's index in the whole collection."""
        project = owner(detector.project_id)
        if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
            raise AnnotationError("annotations must be a GeoJSON FeatureCollection")
        features = collection.get("features")
        if not isinstance(features, list):
            raise AnnotationError("the FeatureCollection has no features list")
        groups: dict[str, list[int]] = {}
        for index, feature in enumerate(features):
            props = feature.get("properties") if isinstance(feature, dict) else None
            image_id = props.get("image_id") if isinstance(props, dict) else None
            if not isinstance(image_id, str):
                raise AnnotationError(f"feature {index}: properties.image_id is missing", index)
            groups.setdefault(image_id, []).append(index)
        if require_labels and not groups:
            raise AnnotationError("there are no annotations to train on: draw a training area")
        parsed = {}
        for image_id, indexes in groups.items():
            try:
                image = self.images.get(image_id, project)
            except LookupError as exc:
                raise AnnotationError(
                    f"feature {indexes[0]}: no image with id {image_id!r}", indexes[0]
                ) from exc
            if image.meta is None:
                raise AnnotationError(f"feature {indexes[0]}: image {image_id} is still ingesting")
            subset = {"type": "FeatureCollection", "features": [features[i] for i in indexes]}
            try:
                parsed[image_id] = parse_annotations(
                    subset,
                    classes=detector.classes,
                    image_crs_wkt=image.meta["crs_wkt"],
                    image_bounds=tuple(image.meta["bounds"]),
                    image_id=image_id,
                    require_labels=False,
                )
            except AnnotationError as exc:
                raise _renumbered(exc, indexes) from exc
            parsed[image_id] = _renumbered_annotations(parsed[image_id], indexes)
        if require_labels:
            if not any(a.training for a in parsed.values()):
                raise AnnotationError("there is no training area: draw one and label inside it")
            if not any(a.labels for a in parsed.values()):
                raise AnnotationError("there are no labels: outline some objects to learn from")
            if not any(a.used_labels() for a in parsed.values()):
                raise AnnotationError(
                    "no label lies in a training area: draw a training area round labelled objects"
                )
        return parsed

    # Training ----------------------------------------------------------------------------------

    def start(
        self,
        detector_id: str,
        seconds: float | None = None,
        steps: int | None = None,
        project: str | None = None,
    ) -> JobRecord:
        """Validate the stored annotations, then queue the training; nothing starts otherwise."""
        detector = self.detectors.get(detector_id, project)
        stored = self.annotations.get(detector_id)
        collection = stored.collection if stored else {"type": "FeatureCollection", "features": []}
        parsed = self.parse(detector, collection, require_labels=True)
        sources = {
            image_id: ImageSource(
                image_id, self.images.cog_path(image_id), self.images.get(image_id).meta
            )
            for image_id in parsed
        }
        request = TrainingRequest(
            name=detector.name,
            class_names=tuple(detector.classes),
            colors=tuple(detector.colors or ()),
            images=sources,
            annotations=parsed,
            seconds=seconds,
            steps=steps,
        )
        with self.quotas.admit(owner(detector.project_id), "training"):
            job = self.jobs.create(
                TRAIN_JOB,
                detector_id=detector_id,
                message="queued",
                project=owner(detector.project_id),
            )
        options = self.blobs.gdal_options()
        for source in sources.values():
            options |= gdal_options_for_path(source.cog_path)
        task = TrainingTask(
            request, self.blobs.ref(f"{TRAINING_PREFIX}/{job.id}"), tuple(sorted(options.items()))
        )
        # The version records the revision it learnt from: the annotations may change meanwhile.
        revision = stored.revision if stored else 0
        thread = threading.Thread(
            target=self._run,
            args=(job.id, detector_id, task, revision),
            name=f"train-{job.id}",
            daemon=True,
        )
        self._threads[job.id] = thread
        thread.start()
        return job  # as stored: a second read that a database outage failed would hide the job

    def _run(self, job_id: str, detector_id: str, task: TrainingTask, revision: int) -> None:
        work = open_blob_store(
            task.work_dir,
            cache_dir=self.settings.blob_cache_dir,
            staging_dir=self.settings.staging_dir,
        )
        # Where free space tells a full disk behind a vague write error (a remote store's
        # trainings write on their worker).
        written = work.local_root() if work.is_local else self.settings.staging_dir
        attempts: list[dict] = []
        # Progress may be lost to a database outage; the result may not (_publish).
        skip = SkipWhileUnavailable(f"progress of training {job_id}")
        try:
            skip(self.jobs.start, job_id, "waiting for a worker")
            client = self.exports.client()
            future = client.submit(
                run_training,
                task,
                key=f"train-{job_id}",
                pure=False,
                resources=self.settings.dask_resources(),
            )
            while not future.done():
                attempts = read_attempts(work) or attempts
                progress = read_progress(work)
                if progress is not None:
                    message = (
                        f"step {progress['step']} · loss {progress['loss']:.3f} · "
                        f"{progress['seconds_left']:.0f} s left"
                    )
                    if len(attempts) > 1:
                        message += f" · on {_worker(attempts[-1])}, try {len(attempts)}"
                    details = {**progress, "attempts": attempts}
                    skip(self.jobs.report, job_id, progress["fraction"] * 0.9, message, details)
                elif len(attempts) > 1:
                    skip(
                        self.jobs.report,
                        job_id,
                        0.0,
                        f"worker {_worker(attempts[-2])} was lost; restarting on "
                        f"{_worker(attempts[-1])}",
                        {"attempts": attempts},
                    )
                time.sleep(0.5)
            try:
                report = future.result()
            except KilledWorker as exc:
                attempts = read_attempts(work) or attempts
                lost = ", ".join(_worker(a) for a in attempts) or "unknown"
                raise TrainingLostError(
                    f"the Dask worker running this training died (worker: {lost}) more often "
                    f"than the scheduler retries; no version was published ({exc})"
                ) from exc
            attempts = read_attempts(work) or attempts
            report["annotation_revision"] = revision
            report["attempts"] = len(attempts) or 1
            write_report(work, report)
            skip(
                self.jobs.report,
                job_id,
                0.95,
                "publishing the new version",
                read_progress(work) or {},
            )
            self._publish(job_id, detector_id, work, report, revision, attempts)
        except Exception as exc:  # the job must end in a truthful state, whatever happened
            log.exception("training %s failed", job_id)
            self._record_failure(job_id, f"{type(exc).__name__}: {failure_reason(exc, written)}")
        finally:
            self.blobs.delete_prefix(f"{TRAINING_PREFIX}/{job_id}")  # and its local copies
            self._threads.pop(job_id, None)

    def _publish(
        self,
        job_id: str,
        detector_id: str,
        work: BlobStore,
        report: dict,
        revision: int,
        attempts: list[dict],
    ) -> None:
        """Record the trained model as the detector's next version, then the job's success;
        both wait for the database if it is unavailable, so a finished training is not lost."""
        model = work.local_path("model.onnx")  # a download when the store is remote
        spec = load_detector(model).spec
        version = self._waiting(
            job_id,
            lambda: self.detectors.add_version(
                detector_id,
                model,
                spec,
                metrics=report.get("metrics"),
                source="train",
                attachments={
                    "report.json": work.local_path("report.json"),
                    "predictions.geojson": work.local_path("predictions.geojson"),
                    "suggestions.geojson": work.local_path("suggestions.geojson"),
                },
                annotation_revision=revision,
            ),
        )
        self.layers.forget([])  # the latest version changed: serve it at once
        result = {
            "detector_id": detector_id,
            "version": version.number,
            "annotation_revision": revision,
            "attempts": attempts,
            "metrics": report.get("metrics"),
            "report": {k: v for k, v in report.items() if k != "metrics"},
        }
        done = f"version {version.number} published"
        self._waiting(job_id, lambda: self.jobs.succeed(job_id, result, message=done))

    def _waiting(self, job_id: str, write: Callable[[], T]) -> T:
        """A training's outcome written, waiting for the database if it is unavailable."""
        return retry_unavailable(write, f"training {job_id}", self.settings.database_wait_s)

    def _record_failure(self, job_id: str, error: str) -> None:
        try:
            self._waiting(job_id, lambda: self.jobs.fail(job_id, error))
        except Exception:  # the database never came back: a restart fails the job
            log.exception("the failure of training %s could not be recorded", job_id)

    def remove_orphan_work(self) -> list[str]:
        """At startup, after interrupted jobs were failed: delete training folders whose job is
        over (a killed server leaves its trainings' folders; live jobs of other processes keep
        theirs)."""
        job_ids = {key.split("/")[1] for key in self.blobs.list(TRAINING_PREFIX) if "/" in key}
        removed = []
        for job_id in sorted(job_ids):
            try:
                over = self.jobs.get(job_id).status in JobStatus.FINISHED
            except JobNotFoundError:
                over = True
            if over:
                self.blobs.delete_prefix(f"{TRAINING_PREFIX}/{job_id}")
                removed.append(job_id)
        return removed


def _renumbered(exc: AnnotationError, indexes: list[int]) -> AnnotationError:
    """An error about the n-th feature of an image's subset, told about the whole collection."""
    index = getattr(exc, "feature_index", None)
    if index is None or index >= len(indexes):
        return exc
    message = str(exc).replace(f"feature {index}", f"feature {indexes[index]}", 1)
    return AnnotationError(message, indexes[index])


def _prefilled(collection: dict) -> int:
    """Labels of this revision that began as a version's predictions (`prefilled_from`)."""
    return sum(
        1
        for f in collection["features"]
        if isinstance(f.get("properties"), dict) and "prefilled_from" in f["properties"]
    )


def _renumbered_annotations(annotations: Annotations, indexes: list[int]) -> Annotations:
    """An image's annotations whose feature numbers (areas, labels, and so the warnings' words)
    are those of the whole collection, as the user sent it."""

    def moved(item):
        return dataclasses.replace(item, index=indexes[item.index])

    renumbered = Annotations(
        training=tuple(map(moved, annotations.training)),
        testing=tuple(map(moved, annotations.testing)),
        accuracy=tuple(map(moved, annotations.accuracy)),
        labels=tuple(map(moved, annotations.labels)),
    )
    return dataclasses.replace(renumbered, warnings=label_warnings(renumbered))


class TrainingLostError(RuntimeError):
    """The workers that ran a training all died before it finished."""


def _worker(attempt: dict) -> str:
    return str(attempt.get("name") or attempt.get("worker") or f"pid {attempt.get('pid')}")
