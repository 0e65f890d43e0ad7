"""Training as a Dask task: runs on whichever worker takes it (a GPU worker where one declares
the resource), reporting progress through a small JSON file in the shared blob store, which the
server reads; so the API stays responsive and the worker needs no way back to the server."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.loop import TrainProgress
from trainer.train import TrainingRequest, train_detector

PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class TrainingTask:
    request: TrainingRequest
    work_dir: str  # shared storage: model.onnx, report.json, predictions.geojson, progress.json


def run_training(task: TrainingTask) -> dict:
    work = Path(task.work_dir)
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
            work,
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


def write_progress(work: Path, value: dict) -> None:
    staging = work / f".{PROGRESS_FILE}.{os.getpid()}"
    staging.write_text(json.dumps(value))
    os.replace(staging, work / PROGRESS_FILE)


def read_progress(work: Path) -> dict | None:
    try:
        return json.loads((work / PROGRESS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
