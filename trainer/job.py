"""Training as a Dask task: runs on whichever worker takes it (a GPU worker where one declares
the resource), reporting progress through a small JSON file in the shared blob store, which the
server reads; so the API stays responsive and the worker needs no way back to the server.

The work folder is a blob ref: a shared directory (trained in place), or an s3:// / gs:// prefix
(trained in a local temporary folder; progress and the finished files are put into the store)."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from catalog.blobstore import BlobStore, apply_gdal_options, open_blob_store
from trainer.loop import TrainProgress
from trainer.train import TrainingRequest, train_detector

PROGRESS_FILE = "progress.json"
OUTPUT_FILES = ("model.onnx", "report.json", "predictions.geojson")


@dataclass(frozen=True)
class TrainingTask:
    request: TrainingRequest
    work_dir: str  # blob ref: model.onnx, report.json, predictions.geojson, progress.json
    gdal_options: tuple[tuple[str, str], ...] = ()  # to read the images' COGs (custom S3)


def run_training(task: TrainingTask) -> dict:
    apply_gdal_options(dict(task.gdal_options))
    store = open_blob_store(task.work_dir)
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
    try:
        return json.loads(store.read_bytes(PROGRESS_FILE))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
