"""Training as a Dask task: runs on whichever worker takes it (a GPU worker where one declares
the resource), reporting progress through a small JSON file in the shared blob store, which the
server reads; so the API stays responsive and the worker needs no way back to the server.

The work folder is a blob ref: a shared directory (trained in place), or an s3:// / gs:// prefix
(trained in a local temporary folder; progress and the finished files are put into the store)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from catalog.blobstore import BlobStore, apply_gdal_options, open_blob_store
from trainer.loop import TrainProgress
from trainer.train import TrainingRequest, train_detector

PROGRESS_FILE = "progress.json"
ATTEMPTS_FILE = "attempts.json"  # the workers that started this task, oldest first
REPORT_FILE = "report.json"
OUTPUT_FILES = ("model.onnx", REPORT_FILE, "predictions.geojson", "suggestions.geojson")


@dataclass(frozen=True)
class TrainingTask:
    request: TrainingRequest
    work_dir: str  # blob ref: model.onnx, report.json, *.geojson, progress.json
    gdal_options: tuple[tuple[str, str], ...] = ()  # to read the images' COGs (custom S3)


def run_training(task: TrainingTask) -> dict:
    apply_gdal_options(dict(task.gdal_options))
    store = open_blob_store(task.work_dir)
    # Dask reruns the task elsewhere when its worker dies: say so, and start clean so nothing of
    # the lost attempt can be published as this one's.
    _record_attempt(store)
    for name in (PROGRESS_FILE, *OUTPUT_FILES):
        store.delete_prefix(name)
    if store.is_local:
        return _train(task, store.local_root(), store)
    with tempfile.TemporaryDirectory(prefix="tiledetect-train-") as folder:
        work = Path(folder)
        report = _train(task, work, store)
        for name in OUTPUT_FILES:
            if (work / name).is_file():
                store.put_file(work / name, name)
        return report


def _train(task: TrainingTask, work: Path, store: BlobStore) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    budget = task.request.seconds
    last = {"time": 0.0}
    curve: list[dict] = []

    def report(state: TrainProgress) -> None:
        if state.step % 10 == 0 or state.step == 1:
            curve.append({"step": state.step, "loss": round(state.loss, 4)})
        now = time.monotonic()
        if now - last["time"] < 0.5:
            return
        last["time"] = now
        write_progress(
            store,
            {
                "step": state.step,
                "loss": round(state.loss, 4),
                "fraction": round(state.fraction, 4),
                "elapsed": round(state.elapsed, 1),
                "seconds_left": round(state.seconds_left, 1),
                "budget_seconds": budget,
                "loss_curve": curve[-200:],
            },
        )

    return train_detector(task.request, work, progress=report)


def write_progress(store: BlobStore, value: dict) -> None:
    store.put_bytes(json.dumps(value).encode(), PROGRESS_FILE)  # atomic: never half a file


def read_progress(store: BlobStore) -> dict | None:
    return _read_json(store, PROGRESS_FILE)


def write_report(store: BlobStore, report: dict) -> None:
    """Rewrite report.json (atomically), e.g. with what the server adds before publishing."""
    store.put_bytes(json.dumps(report, indent=1).encode(), REPORT_FILE)


def _record_attempt(store: BlobStore) -> None:
    try:
        from distributed import get_worker

        worker = get_worker()
        who = {"worker": worker.address, "name": str(worker.name)}
    except ValueError:  # not on a Dask worker (called directly)
        who = {"worker": None, "name": None}
    # Read-modify-write is safe: the scheduler runs one attempt of a task at a time.
    attempts = read_attempts(store)
    attempts.append({**who, "pid": os.getpid(), "started": time.time()})
    store.put_bytes(json.dumps(attempts).encode(), ATTEMPTS_FILE)


def read_attempts(store: BlobStore) -> list[dict]:
    """The workers that started the task so far, oldest first."""
    attempts = _read_json(store, ATTEMPTS_FILE)
    return attempts if isinstance(attempts, list) else []


def _read_json(store: BlobStore, key: str):
    try:
        return json.loads(store.read_bytes(key))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
