"""Export throughput benchmark: `export.run.run_export` on Dask over a large synthetic COG.

The image is a synthetic scene of IMAGE_PX x IMAGE_PX pixels (default 20000 at the demo
detector's 0.3 m: 11 x 11 export cells of 1920 px), made a JPEG COG the way ingest makes one.
On a 2-core CPU one export cell (2048 px inferred as 49 window-lattice chunks) takes ~6 s,
so one pass over the whole image takes ~12 min and the benchmark makes about four passes: by
default the export covers a centred AOI of 4 x 4 cells (7680 x 7680 px, 59 Mpx) of that COG and
the script takes ~6-7 min once its inputs are cached (~5 min more the first time). `--aoi-cells 0`
exports the whole image instead; `--runs` picks runs. Every line says what it measured.

- throughput: image Mpx/s of run_export (image pixels covered / its wall time) divided by
  onnxruntime's own Mpx/s over the same pixels: `detector.run` alone, in this run, on inputs of
  exactly the shapes and count the export's cells infer (the `chunk_edges` chunks of each cell's
  core plus object margin, with context, as `infer_region` makes them), `load_detector`'s
  session, random pixels, one warm-up call per shape; run both as one call at a time on every
  core and as two calls at once on one core each, and the faster of the two is the baseline.
  Target >= 0.85. Measured with one in-process worker of 1 thread and of 2 threads (the
  default: each cell's onnxruntime calls then get a core, export.cell_task.session_threads,
  and one cell's reading and object extraction overlap another's inference).
- breakdown: where a cell's time goes (read, onnxruntime, the rest of infer_region, object
  extraction, cell rows, writing), from timers wrapped around export.cell_task's functions in
  the in-process runs. Not a target: the evidence for what limits throughput.
- scaling: a quarter of the region (half its cells each way, same centre) against the whole
  region: 4x the area must take <= 4.2x the time (normalised when the area ratio is not 4).
  Peak RSS of the export process and every process under it (Dask workers included), sampled
  with psutil every 200 ms: target < 1.5 GB for both sizes.
- workers: LocalCluster(n_workers=2, threads_per_worker=1, processes=True) against
  n_workers=1 (also processes=True) on the quarter region. Reported, no target: onnxruntime
  already uses every core from one worker.

Every run is its own child process (`--child`), so a peak RSS is that export's alone and no Dask
state carries over. Inputs (detector, scene COG) are kept under the cache directory (default
bench/results/cache/, gitignored): a 20000 px scene takes ~3 min to render and ~1 min to
convert, with ~0.9 and ~1.6 GB of memory. Each run also reports the CPU that other processes
used meanwhile (other_load_cores): on 2 cores any other load lands straight in the figures.

    python -m bench.export_throughput [--image-px N] [--aoi-cells COLSxROWS | N | 0]
                                      [--runs large_t1,onnx_large,...] [--cache-dir DIR]

Environment equivalents: TILEDETECT_BENCH_EXPORT_IMAGE_PX, TILEDETECT_BENCH_EXPORT_AOI_CELLS,
TILEDETECT_BENCH_EXPORT_RUNS, TILEDETECT_BENCH_CACHE.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.common import REPO, RESULTS_DIR, BenchError, machine, subprocess_env, write_results

NAME = "export_throughput"
IMAGE_PX = 20000
AOI_CELLS = "4x4"  # columns x rows of export cells exported; "0" = the whole image
CELL_PX = 2048  # the export's default cell size (rounded to whole windows: 1920 px cores)
SCENE_SEED = 7
DETECTOR_STEPS = 30  # speed does not depend on how well the detector was trained
RSS_SAMPLE_S = 0.2  # often enough for peaks that last a cell (seconds); cheap on 2 cores
TARGET_RATIO = 0.85
TARGET_SCALING = 4.2  # time for 4x the area
TARGET_RSS_MB = 1500.0
BUSY_CORES = 0.15  # other load (average cores) above which the figures get a warning
CACHE_VERSION = 1  # bump when the way inputs are made changes
DETECTOR_CACHE_VERSION = 4  # 2: region_chunk_px in the metadata; 3: 768; 4: 640


# Inputs --------------------------------------------------------------------------------------


def cache_dir(override: str | None) -> Path:
    root = override or os.environ.get("TILEDETECT_BENCH_CACHE") or str(RESULTS_DIR / "cache")
    path = Path(root) / NAME
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_detector(cache: Path) -> tuple[Path, float]:
    """The demo detector after DETECTOR_STEPS steps (deterministic); seconds spent making it."""
    path = cache / f"demo-steps{DETECTOR_STEPS}-seed0-v{DETECTOR_CACHE_VERSION}.onnx"
    if path.is_file():
        return path, 0.0
    from trainer.demo_detector import build_demo_detector  # torch: only when training

    started = time.perf_counter()
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        build_demo_detector(staging, steps=DETECTOR_STEPS, seed=0)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path, time.perf_counter() - started


def cached_scene(cache: Path, size: int) -> tuple[Path, float]:
    """A size x size synthetic scene as a JPEG COG (what ingest writes); seconds spent making it.

    write_scene renders strip by strip: 20000 x 20000 px takes ~3 min and ~0.9 GB; the COG
    conversion another ~1-2 min.
    """
    from scenes.synthetic import SceneSpec, write_scene
    from tiles.cog import write_cog
    from tiles.source import inspect_source

    path = cache / f"scene-{size}-seed{SCENE_SEED}-v{CACHE_VERSION}.cog.tif"
    if path.is_file():
        return path, 0.0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".scene-", dir=cache) as tmp:
        source = Path(tmp) / "scene.tif"
        write_scene(
            SceneSpec(width=size, height=size, seed=SCENE_SEED), source, Path(tmp) / "truth.json"
        )
        staging = Path(tmp) / "scene.cog.tif"
        write_cog(source, staging, inspect_source(source))
        os.replace(staging, path)
    return path, time.perf_counter() - started


def prime_page_cache(path: Path) -> None:
    """Read the COG once so the first export does not pay for cold disk reads."""
    with path.open("rb") as f:
        while f.read(1 << 24):
            pass


# Regions -------------------------------------------------------------------------------------


def parse_region(text: str) -> tuple[int, int] | None:
    """Parse COLSxROWS, N (N x N) or 0 (the whole image) into (cols, rows), or None."""
    cols, _, rows = text.lower().partition("x")
    shape = (int(cols), int(rows or cols))
    if shape[0] < 0 or shape[1] < 0:
        raise ValueError(f"bad region {text!r}")
    return None if 0 in shape else shape


def cell_grid(source):
    from export.cells import CellGrid
    from inference.windows import WindowGrid

    return CellGrid.for_windows(WindowGrid.for_image(source.image_meta, source.spec), CELL_PX)


def plan_region(source, export_dir: Path, region: list[int] | None):
    """Jobs for a centred block of `region` = [cols, rows] export cells (None, or as large as
    the grid: the whole image), with the image pixels their cores cover."""
    from shapely.geometry import box

    from export.run import plan_cells

    meta = source.image_meta
    grid = cell_grid(source)
    aoi = None
    if region is not None and (region[0] < grid.cols or region[1] < grid.rows):
        cols, rows = min(region[0], grid.cols), min(region[1], grid.rows)
        col0, row0 = (grid.cols - cols) // 2, (grid.rows - rows) // 2
        left, _, _, top = grid.cell(col0, row0).bounds
        _, bottom, right, _ = grid.cell(col0 + cols - 1, row0 + rows - 1).bounds
        inset = grid.windows.pixel_size / 2  # so that the cells around it do not touch it
        aoi = box(left + inset, bottom + inset, right - inset, top - inset)
    jobs = plan_cells(source, export_dir, aoi=aoi, cell_px=CELL_PX)
    image = box(*meta["bounds"])
    res_x, res_y = meta["resolution"]
    pixels = sum(box(*j.cell.bounds).intersection(image).area for j in jobs) / abs(res_x * res_y)
    return jobs, pixels


def region_label(jobs) -> str:
    cols = len({j.cell.col for j in jobs})
    rows = len({j.cell.row for j in jobs})
    return f"{cols}x{rows}"


# Child: one export, or onnxruntime alone ---------------------------------------------------------


class Timers:
    """Seconds summed per wrapped function (over all threads) and call counts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def wrap(self, module, name: str, label: str) -> None:
        original = getattr(module, name, None)
        if original is None:  # export/ changed under us: time less rather than fail
            return

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                result = original(*args, **kwargs)
                if label == "rows":  # a generator: its work happens while it is consumed
                    result = list(result)
                return result
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self.seconds[label] = self.seconds.get(label, 0.0) + elapsed
                    self.calls[label] = self.calls.get(label, 0) + 1

        setattr(module, name, timed)


def instrument() -> Timers:
    """Timers around the steps of a cell and of run_export (only seen by in-process workers)."""
    import export.cell_task as cell_task
    import export.run as run

    timers = Timers()
    timers.wrap(cell_task, "_detector", "session")
    timers.wrap(cell_task, "infer_region", "infer_region")
    timers.wrap(cell_task, "extract_objects", "extract")
    timers.wrap(cell_task, "_cell_rows", "rows")
    timers.wrap(cell_task, "_write_atomically", "write")
    timers.wrap(run, "sweep", "sweep")
    timers.wrap(run, "write_result", "merge_write")
    return timers


def child_source(config: dict):
    from export.run import ExportSource, image_meta
    from inference.session import load_detector

    spec = load_detector(config["onnx"]).spec
    return ExportSource(config["cog"], config["onnx"], spec, image_meta(config["cog"]))


def child_export(config: dict) -> dict:
    from distributed import Client, LocalCluster

    from export.run import run_export
    from export.writers import format_named

    source = child_source(config)
    workdir = Path(config["workdir"])
    jobs, pixels = plan_region(source, workdir / "export", config["region"])
    timers = None if config["processes"] else instrument()
    with (
        LocalCluster(
            n_workers=config["workers"],
            threads_per_worker=config["threads"],
            processes=config["processes"],
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        outcome = run_export(
            client, NAME, source, jobs, workdir / "objects.gpkg", format_named("gpkg")
        )
    if outcome.state != "done":
        raise BenchError(f"export ended {outcome.state}: {outcome.sweep.failed}")
    cells = list(outcome.sweep.done.values())
    return {
        "cells": len(jobs),
        "region": region_label(jobs),
        "pixels": pixels,
        "wall_s": outcome.seconds,
        "objects": outcome.summary["objects"],
        "cell_s": sum(c["seconds"] for c in cells),
        "read_s": sum(c.get("read_seconds", 0.0) for c in cells),
        "infer_s": sum(c.get("infer_seconds", 0.0) for c in cells),
        "timers": timers.seconds if timers else {},
        "output_mb": (workdir / "objects.gpkg").stat().st_size / 1e6,
        "per_cell": {  # in the order they finished: the first pays session and first-shape costs
            cell_id: [c["seconds"], c.get("read_seconds"), c.get("infer_seconds")]
            for cell_id, c in outcome.sweep.done.items()
        },
    }


def cell_extent(job) -> tuple[int, int]:
    """(height, width) px a cell infers: its core plus the object margin."""
    from export.cell_task import cell_region

    request = cell_region(job)
    return request.height, request.width


def window_calls(jobs, spec) -> list[tuple[int, ...]]:
    """One call per detector window (tile_size, core spaced) covering each cell's region: what
    inferring the same pixels window by window, as map tiles do, would cost."""
    bands = len(spec.input_bands)
    calls = []
    for job in jobs:
        height, width = cell_extent(job)
        count = -(-height // spec.core_size) * -(-width // spec.core_size)
        calls += [(1, bands, spec.tile_size, spec.tile_size)] * count
    return calls


def chunk_batches(jobs, spec, provider: str) -> list[tuple[int, ...]]:
    """The input shape of every detector.run call the export's cells make, in their order
    (as infer_region splits, groups and batches a cell's chunks)."""
    from inference.region import chunk_edges

    context = spec.overlap_px
    batch = 8 if provider == "CUDAExecutionProvider" else 1
    bands = len(spec.input_bands)
    calls = []
    for job in jobs:
        height, width = cell_extent(job)
        row_edges, col_edges = chunk_edges(height, spec), chunk_edges(width, spec)
        by_shape: dict[tuple[int, int], int] = {}
        for r0, r1 in zip(row_edges[:-1], row_edges[1:], strict=True):
            for c0, c1 in zip(col_edges[:-1], col_edges[1:], strict=True):
                key = (r1 - r0 + 2 * context, c1 - c0 + 2 * context)
                by_shape[key] = by_shape.get(key, 0) + 1
        for (rows, cols), count in by_shape.items():
            for first in range(0, count, batch):
                calls.append((min(batch, count - first), bands, rows, cols))
    return calls


def child_onnx(config: dict) -> dict:
    import numpy as np

    from inference.session import load_detector

    source = child_source(config)
    jobs, pixels = plan_region(source, Path(config["workdir"]) / "unused", config["region"])
    # `streams` calls at once, each session call on cores/streams threads (as an export worker
    # with that many threads runs them); 1 stream: one call at a time on every core.
    streams = config.get("streams", 1)
    threads = None if streams == 1 else max(1, (os.cpu_count() or 1) // streams)
    detector = load_detector(config["onnx"], threads=threads)
    if config.get("windows"):
        calls = window_calls(jobs, detector.spec)
    else:
        calls = chunk_batches(jobs, detector.spec, detector.provider)
    rng = np.random.default_rng(0)
    inputs = {shape: rng.standard_normal(shape).astype(np.float32) for shape in set(calls)}
    for batch in inputs.values():
        detector.run(batch)  # warm-up per shape, as the export's first cell pays it

    def run_calls(share: list) -> None:
        for shape in share:
            detector.run(inputs[shape])

    started = time.perf_counter()
    workers = [
        threading.Thread(target=run_calls, args=(calls[i::streams],)) for i in range(streams)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    return {
        "cells": len(jobs),
        "region": region_label(jobs),
        "pixels": pixels,
        "calls": len(calls),
        "shapes": sorted({f"{s[2]}x{s[3]}" for s in calls}),
        "input_mpx": sum(s[0] * s[2] * s[3] for s in calls) / 1e6,
        "seconds": seconds,
        "streams": streams,
        "provider": detector.provider,
    }


def child_main(config: dict) -> int:
    result = child_onnx(config) if config["kind"] == "onnx" else child_export(config)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# Parent: run children, sample their memory --------------------------------------------------------


class TreeMonitor:
    """Peak summed RSS of a process and all its descendants, sampled in a background thread, and
    how much CPU everything else on the machine used meanwhile (on 2 cores, any other load
    lands straight in the figures)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self._cpu: dict[int, float] = {}  # pid -> user + system seconds, last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._busy_start = self._busy_end = _machine_busy_s()
        self._started = self._ended = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                    total += process.memory_info().rss
                    times = process.cpu_times()
                    self._cpu[process.pid] = times.user + times.system
            self.peak = max(self.peak, total)
            self._stop.wait(RSS_SAMPLE_S)

    @property
    def other_cores(self) -> float:
        """Average cores busy outside the process tree (this script's sampler included)."""
        busy = self._busy_end - self._busy_start - sum(self._cpu.values())
        return max(0.0, busy) / max(1e-9, self._ended - self._started)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._busy_end, self._ended = _machine_busy_s(), time.perf_counter()


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    fields = ("user", "nice", "system", "irq", "softirq", "steal")  # guest is inside user
    return sum(getattr(times, name, 0.0) for name in fields)


def run_child(config: dict, workdir: Path) -> dict:
    """One measurement in a fresh Python process; its result plus that process tree's peak RSS."""
    rundir = Path(tempfile.mkdtemp(prefix=f"{config['kind']}-", dir=workdir))
    config = config | {"workdir": str(rundir)}
    log = rundir / "child.log"
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", f"bench.{NAME}", "--child", json.dumps(config)],
            cwd=REPO,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        with TreeMonitor(child.pid) as monitor:
            code = child.wait()
    text = log.read_text(errors="replace")
    results = [line[7:] for line in text.splitlines() if line.startswith("RESULT ")]
    if code != 0 or not results:
        raise BenchError(f"{config['kind']} child failed (exit {code}):\n{text[-4000:]}")
    shutil.rmtree(rundir, ignore_errors=True)
    result = json.loads(results[-1])
    result["peak_rss_mb"] = monitor.peak / 2**20
    result["other_cores"] = monitor.other_cores
    result["process_s"] = time.perf_counter() - started
    return result


def export_config(region, workers: int, threads: int, processes: bool) -> dict:
    return {
        "kind": "export",
        "region": region,
        "workers": workers,
        "threads": threads,
        "processes": processes,
    }


RUNS = (
    "large_t1",
    "onnx_large",
    "onnx_large_s2",
    "onnx_windows_s2",
    "large_t2",
    "small_t1",
    "small_p1",
    "small_p2",
)


def run_plan(large, small) -> dict[str, dict]:
    """Every run the benchmark knows, by name, in the order they run."""
    return {
        "large_t1": export_config(large, 1, 1, False),
        "onnx_large": {"kind": "onnx", "region": large},
        "onnx_large_s2": {"kind": "onnx", "region": large, "streams": 2},
        "onnx_windows_s2": {"kind": "onnx", "region": large, "streams": 2, "windows": True},
        "large_t2": export_config(large, 1, 2, False),
        "small_t1": export_config(small, 1, 1, False),
        "small_p1": export_config(small, 1, 1, True),
        "small_p2": export_config(small, 2, 1, True),
    }


# Report -----------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def throughput_line(run: dict, onnx: dict, threads: int, label: str) -> str:
    mpx = run["pixels"] / 1e6
    ratio = onnx["seconds"] / run["wall_s"]  # (px / wall) / (px / onnx)
    return (
        f"{NAME} {label} region={run['region']} cells={run['cells']} image_mpx={mpx:.1f} "
        f"workers=1 threads={threads} wall_s={run['wall_s']:.1f} "
        f"export_mpx_s={mpx / run['wall_s']:.3f} onnx_alone_s={onnx['seconds']:.1f} "
        f"onnx_calls={onnx['calls']} onnx_mpx_s={mpx / onnx['seconds']:.3f} "
        f"ratio={ratio:.3f} (target >= {TARGET_RATIO}) {verdict(ratio >= TARGET_RATIO)} "
        # ratio = onnx_alone / in-export onnx time (did onnxruntime run slower inside the export?)
        #       * in-export onnx time / wall (threads=1: the share of the wall spent inferring)
        f"= onnx_alone/in_export_onnx {onnx['seconds'] / run['infer_s']:.3f} "
        f"x in_export_onnx/wall {run['infer_s'] / run['wall_s']:.3f} "
        f"peak_rss_mb={run['peak_rss_mb']:.0f}"
    )


def breakdown_line(run: dict, threads: int) -> str:
    cells = run["cells"]
    t = run["timers"]
    infer_region = t.get("infer_region", 0.0)
    parts = {
        "read": run["read_s"],
        "onnx": run["infer_s"],
        "region_other": infer_region - run["read_s"] - run["infer_s"],
        "extract": t.get("extract", 0.0),
        "rows": t.get("rows", 0.0),
        "write": t.get("write", 0.0),
    }
    parts["cell_other"] = run["cell_s"] - sum(parts.values())
    per_cell = " ".join(f"{k}={v / cells:.2f}" for k, v in parts.items())
    shares = " ".join(f"{k}={100 * v / run['cell_s']:.0f}%" for k, v in parts.items())
    sweep = t.get("sweep", run["wall_s"])
    idle = sweep * threads - run["cell_s"]
    return (
        f"{NAME} breakdown threads={threads} per_cell_s: {per_cell} "
        f"total={run['cell_s'] / cells:.2f} "
        f"| share: {shares} | session_s={t.get('session', 0.0):.2f} sweep_s={sweep:.1f} "
        f"thread_idle_s={idle:.1f} merge_write_s={t.get('merge_write', 0.0):.1f} "
        f"objects={run['objects']}"
    )


def report(runs: dict, context: dict) -> list[str]:
    lines = [
        f'{NAME} machine cpus={context["cpus"]} model="{context["cpu_model"]}" '
        f"provider={context['provider']} image={context['image_px']}x{context['image_px']} "
        f"cog_mb={context['cog_mb']:.0f} cell_core_px={context['cell_core_px']} "
        f"detector_steps={DETECTOR_STEPS} measured={context['region_note']}"
    ]
    busiest = max((run["other_cores"] for run in runs.values()), default=0.0)
    if busiest > BUSY_CORES:
        lines.append(
            f"{NAME} WARNING other processes kept up to {busiest:.2f} cores busy during a run "
            f"(see other_load_cores per run): the figures are not those of an idle machine"
        )
    t1, t2 = runs.get("large_t1"), runs.get("large_t2")
    # onnxruntime alone at its best on this machine: one call at a time on every core, or two
    # at once on a core each, whichever is faster, is the figure the export is held to.
    alone = [runs[name] for name in ("onnx_large", "onnx_large_s2") if name in runs]
    onnx = min(alone, key=lambda r: r["seconds"]) if alone else None
    if len(alone) == 2:
        lines.append(
            f"{NAME} onnx_alone region={alone[0]['region']} one_stream_s="
            f"{alone[0]['seconds']:.1f} two_streams_s={alone[1]['seconds']:.1f} "
            f"(two calls at once, 1 thread each: {alone[0]['seconds'] / alone[1]['seconds']:.2f}x"
            f" the throughput) best={onnx['streams']} stream(s)"
        )
    if onnx and t1:
        lines.append(throughput_line(t1, onnx, 1, "throughput"))
    if onnx and t2:
        line = throughput_line(t2, onnx, 2, "throughput_threads2")
        if t1:
            line += f" speedup_vs_threads1={t1['wall_s'] / t2['wall_s']:.2f}x"
        lines.append(line)
    windows = runs.get("onnx_windows_s2")
    if windows and t2:
        lines.append(
            f"{NAME} vs_windows region={t2['region']} onnx_on_windows_s={windows['seconds']:.1f} "
            f"({windows['calls']} windows of {windows['shapes'][0]}, two at once) "
            f"export_threads2_s={t2['wall_s']:.1f} "
            f"export/onnx_on_windows={windows['seconds'] / t2['wall_s']:.2f} (exports infer "
            f"bigger chunks where the detector allows, computing less context twice)"
        )
    for threads, run in ((1, t1), (2, t2)):
        if run and run["timers"]:
            lines.append(breakdown_line(run, threads))
    small = runs.get("small_t1")
    if small and t1:
        area_x = t1["pixels"] / small["pixels"]
        time_x = t1["wall_s"] / small["wall_s"]
        per_4x = 4 * time_x / area_x
        peak = max(small["peak_rss_mb"], t1["peak_rss_mb"])
        lines.append(
            f"{NAME} scaling small={small['region']} ({small['pixels'] / 1e6:.1f} Mpx) "
            f"wall_s={small['wall_s']:.1f} large={t1['region']} ({t1['pixels'] / 1e6:.1f} Mpx) "
            f"wall_s={t1['wall_s']:.1f} area_x={area_x:.2f} time_x={time_x:.2f} "
            f"time_for_4x_area={per_4x:.2f}x (target <= {TARGET_SCALING}) "
            f"{verdict(per_4x <= TARGET_SCALING)} peak_rss_mb small={small['peak_rss_mb']:.0f} "
            f"large={t1['peak_rss_mb']:.0f} (target < {TARGET_RSS_MB:.0f}) "
            f"{verdict(peak < TARGET_RSS_MB)}"
        )
    p1, p2 = runs.get("small_p1"), runs.get("small_p2")
    if p1 and p2:
        line = (
            f"{NAME} workers region={p1['region']} processes=True threads_per_worker=1 "
            f"one_worker_s={p1['wall_s']:.1f} two_workers_s={p2['wall_s']:.1f} "
            f"speedup={p1['wall_s'] / p2['wall_s']:.2f}x peak_rss_mb one={p1['peak_rss_mb']:.0f} "
            f"two={p2['peak_rss_mb']:.0f}"
        )
        if small:
            line += f" (in-process one worker: {small['wall_s']:.1f} s)"
        lines.append(line)
    return lines


# Entry -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--image-px",
        type=int,
        default=int(env("TILEDETECT_BENCH_EXPORT_IMAGE_PX", IMAGE_PX)),
        help=f"side of the synthetic scene, px (default {IMAGE_PX})",
    )
    parser.add_argument(
        "--aoi-cells",
        default=env("TILEDETECT_BENCH_EXPORT_AOI_CELLS", AOI_CELLS),
        help=f"export cells exported, COLSxROWS or N (default {AOI_CELLS}; 0: the whole image)",
    )
    parser.add_argument(
        "--runs",
        default=env("TILEDETECT_BENCH_EXPORT_RUNS", ",".join(RUNS)),
        help=f"comma-separated runs to make (default all: {','.join(RUNS)})",
    )
    parser.add_argument("--cache-dir", default=None, help="where inputs are kept between runs")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.runs.split(",")) - set(RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}; choose from {', '.join(RUNS)}")
    try:
        args.region = parse_region(str(args.aoi_cells))
    except ValueError:
        parser.error(f"--aoi-cells wants COLSxROWS, N or 0, not {args.aoi_cells!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))
    started = time.perf_counter()
    cache = cache_dir(args.cache_dir)
    onnx_path, detector_s = cached_detector(cache)
    cog, scene_s = cached_scene(cache, args.image_px)
    prime_page_cache(cog)

    from export.run import ExportSource, image_meta
    from inference.session import load_detector

    detector = load_detector(onnx_path)
    grid = cell_grid(ExportSource(str(cog), str(onnx_path), detector.spec, image_meta(cog)))
    region = args.region
    if region is not None and region[0] >= grid.cols and region[1] >= grid.rows:
        region = None
    large = list(region) if region else None
    # The quarter region: half the cells each way, same centre (for the whole image, of its grid).
    cols, rows = region or (grid.cols, grid.rows)
    small = [max(1, (cols + 1) // 2), max(1, (rows + 1) // 2)]
    base = {"onnx": str(onnx_path), "cog": str(cog)}
    wanted = args.runs.split(",")
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tiledetect-bench-export-") as tmp:
        for name, config in run_plan(large, small).items():
            if name not in wanted:
                continue
            runs[name] = run = run_child(base | config, Path(tmp))
            measured = run.get("wall_s", run.get("seconds", 0.0))
            print(
                f"{NAME} run {name} region={run['region']} cells={run['cells']} "
                f"measured_s={measured:.1f} process_s={run['process_s']:.1f} "
                f"peak_rss_mb={run['peak_rss_mb']:.0f} other_load_cores={run['other_cores']:.2f}",
                flush=True,
            )
    if region:
        note = (
            f"centred AOI of {region[0]}x{region[1]} of the image's {grid.cols}x{grid.rows} "
            f"cells (--aoi-cells 0: the whole image)"
        )
    else:
        note = f"the whole image ({grid.cols}x{grid.rows} cells)"
    context = machine() | {
        "provider": detector.provider,
        "image_px": args.image_px,
        "cog_mb": cog.stat().st_size / 1e6,
        "cell_core_px": grid.cell_px,
        "grid_cells": [grid.cols, grid.rows],
        "large_region": large,
        "small_region": small,
        "region_note": note,
        "detector_build_s": detector_s,
        "scene_build_s": scene_s,
    }
    for line in report(runs, context):
        print(line, flush=True)
    total = time.perf_counter() - started
    print(
        f"{NAME} total_s={total:.0f} (inputs made in this run: detector_s={detector_s:.0f} "
        f"scene_s={scene_s:.0f}; kept in {cache})",
        flush=True,
    )
    write_results(NAME, {"runs": runs, "context": context, "total_s": total})
    return 0


if __name__ == "__main__":
    sys.exit(main())
