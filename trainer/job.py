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
ATTEMPTS_FILE = "attempts.jsonl"  # one line per worker that started this task
OUTPUTS = ("model.onnx", "report.json", "predictions.geojson")


@dataclass(frozen=True)
class TrainingTask:
    request: TrainingRequest
    work_dir: str  # shared storage: model.onnx, report.json, predictions.geojson, progress.json


def run_training(task: TrainingTask) -> dict:
    work = Path(task.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    # Dask reruns the task elsewhere when its worker dies: say so, and start from a clean folder
    # so nothing of the lost attempt can be published as this one's.
    _record_attempt(work)
    for name in (PROGRESS_FILE, *OUTPUTS):
        (work / name).unlink(missing_ok=True)
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


def write_report(work: Path, report: dict) -> None:
    """Rewrite report.json (atomically), e.g. with what the server adds before publishing."""
    staging = work / f".report.json.{os.getpid()}"
    staging.write_text(json.dumps(report, indent=1))
    os.replace(staging, work / "report.json")


def read_progress(work: Path) -> dict | None:
    try:
        return json.loads((work / PROGRESS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _record_attempt(work: Path) -> None:
    try:
        from distributed import get_worker

        worker = get_worker()
        who = {"worker": worker.address, "name": str(worker.name)}
    except ValueError:  # not on a Dask worker (called directly)
        who = {"worker": None, "name": None}
    line = json.dumps({**who, "pid": os.getpid(), "started": time.time()})
    with open(work / ATTEMPTS_FILE, "a") as handle:
        handle.write(line + "\n")


def read_attempts(work: Path) -> list[dict]:
    """The workers that started the task so far, oldest first (a torn last line is skipped)."""
    try:
        lines = (work / ATTEMPTS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return []
    attempts = []
    for line in lines:
        try:
            attempts.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return attempts
