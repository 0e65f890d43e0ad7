"""`tiledetect detect`: the export pipeline on local files, with a progress bar.

Cell results go to a folder beside the output, named after what is being computed, so rerunning
an interrupted command skips the cells it already finished; it is removed once OUT is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from pyproj import CRS

from export.cluster import connect
from export.run import ExportSource, aoi_in_image_crs, image_meta, plan_cells, run_export
from export.sweep import SweepState
from export.writers import format_for_path
from inference.session import load_detector


def run_detect_command(
    model: Path,
    image: Path,
    out: Path,
    *,
    aoi_path: Path | None = None,
    scheduler: str | None = None,
    crs: str | None = None,
    cell_px: int = 2048,
    progress_bar: Callable | None = None,
) -> dict:
    fmt = format_for_path(out)
    target_crs = CRS.from_user_input(crs) if crs else None
    detector = load_detector(model)
    meta = image_meta(image)
    aoi_json = json.loads(aoi_path.read_text()) if aoi_path else None
    aoi = aoi_in_image_crs(aoi_json, meta)
    source = ExportSource(str(image.resolve()), str(model.resolve()), detector.spec, meta)
    work = out.resolve().parent / f".{out.name}.{_fingerprint(model, image, aoi_json, cell_px)}"
    jobs = plan_cells(source, work, aoi, cell_px)
    client, cluster = connect(scheduler)
    try:
        if progress_bar is None:
            outcome = run_export(client, work.name, source, jobs, out, fmt, target_crs)
        else:
            with progress_bar() as bar:
                task = bar.add_task(f"detecting in {image.name}", total=len(jobs))

                def show(state: SweepState) -> None:
                    bar.update(task, completed=len(state.done) + len(state.failed))

                outcome = run_export(
                    client, work.name, source, jobs, out, fmt, target_crs, on_progress=show
                )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if outcome.state == "done":
        shutil.rmtree(work, ignore_errors=True)
    return {
        "state": outcome.state,
        "out": str(out),
        "cells": len(jobs),
        "cells_failed": outcome.sweep.failed,
        "seconds": round(outcome.seconds, 1),
        **outcome.summary,
    }


def _fingerprint(model: Path, image: Path, aoi: dict | None, cell_px: int) -> str:
    parts = [str(model.resolve()), str(model.stat().st_size), str(model.stat().st_mtime_ns)]
    parts += [str(image.resolve()), str(image.stat().st_size), str(image.stat().st_mtime_ns)]
    parts += [json.dumps(aoi, sort_keys=True), str(cell_px)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
