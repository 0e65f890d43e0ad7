"""One export cell, run on a Dask worker: infer, extract objects, write them, mark the cell done.

The task is idempotent: its objects go to `cells/{id}.parquet` and then a `cells/{id}.json`
marker in the export's folder of the blob store (a directory, or an s3:// / gs:// prefix), each
published atomically (a rename, or an object PUT), so a cell is either done (both there) or not
(a rerun redoes it); a worker killed mid-cell leaves nothing that counts.

Objects are decided like display tiles decide them: the cell infers its core plus an object
margin, and an object belongs to the cell holding its representative point. Objects too large for
that margin (or cut by it) are clipped to the cell's core and written as *parts*; the merge step
unions parts of neighbouring cells into whole objects.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from shapely.geometry import box

from catalog.blobstore import BlobStore, apply_gdal_options, fetch_local, open_blob_store
from export.cells import Cell
from inference.objects import DetectedObject, extract_objects
from inference.region import RegionRequest, infer_region
from inference.session import Detector, load_detector
from inference.windows import Bounds

OBJECT_MARGIN_PX = 64  # as display tiles: objects up to this size cross a border whole
ORT_THREADS_ENV = "TILEDETECT_ORT_THREADS"
EDGE_TOLERANCE_PX = 0.5

CELL_SCHEMA = pa.schema(
    [
        ("geometry", pa.binary()),
        ("class", pa.string()),
        ("score", pa.float32()),
        ("area_m2", pa.float64()),
        ("cell", pa.string()),
        ("part", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs for one cell. `export_dir` and `onnx_path` are blob refs (a
    path, or an s3:// / gs:// URL), `cog_path` what GDAL opens, with `gdal_options` (a custom
    S3 endpoint) that the worker process applies; credentials come from its environment."""

    export_dir: str
    cell: Cell
    cog_path: str
    onnx_path: str
    crs_wkt: str
    image_gsd: float
    image_bounds: Bounds
    pixel_size: float  # CRS units per native-resolution pixel
    metres_per_unit: float
    aoi_wkb: bytes | None = None  # image CRS
    fail_marker: str | None = None  # tests: a file whose presence makes the cell fail
    gdal_options: tuple[tuple[str, str], ...] = ()


def done_key(cell_id: str) -> str:
    return f"cells/{cell_id}.json"


def objects_key(cell_id: str) -> str:
    return f"cells/{cell_id}.parquet"


@functools.lru_cache(maxsize=16)
def export_store(export_dir: str | Path) -> BlobStore:
    """The export's folder as a store (one client per worker process and export)."""
    return open_blob_store(export_dir)


def read_done(export_dir: str | Path, cell_id: str) -> dict | None:
    try:
        return json.loads(export_store(export_dir).read_bytes(done_key(cell_id)))
    except FileNotFoundError:
        return None


def _detector(onnx_ref: str) -> Detector:
    """One onnxruntime session per worker process and model (sessions are slow to create)."""
    return _session(str(fetch_local(onnx_ref)), session_threads())


@functools.lru_cache(maxsize=4)
def _session(onnx_path: str, threads: int | None) -> Detector:
    return load_detector(onnx_path, threads=threads)


def session_threads() -> int | None:
    """onnxruntime threads per call: the cores shared among the worker's threads.

    A worker runs as many cells at once as it has threads; each inferring on all cores would
    oversubscribe them, while one core each is 1.25x the throughput of one cell at a time on
    two cores (bench/export_throughput.py) and overlaps one cell's reading with another's
    inference. TILEDETECT_ORT_THREADS overrides, e.g. for several worker processes per host.
    """
    if os.environ.get(ORT_THREADS_ENV):
        return int(os.environ[ORT_THREADS_ENV])
    try:
        from distributed import get_worker

        worker_threads = get_worker().state.nthreads
    except ValueError:  # not inside a Dask task (a direct call): default threads
        return None
    return max(1, (os.cpu_count() or 1) // worker_threads)


def run_cell(job: CellJob) -> dict:
    """Run one cell (or return the summary of an earlier run of it)."""
    apply_gdal_options(dict(job.gdal_options))
    earlier = read_done(job.export_dir, job.cell.id)
    if earlier is not None:
        return earlier
    if job.fail_marker and Path(job.fail_marker).exists():
        raise RuntimeError(f"cell {job.cell.id}: failure injected by {job.fail_marker}")
    started = time.perf_counter()
    detector = _detector(job.onnx_path)
    probabilities, transform, timings = infer_region(cell_region(job), detector)
    objects = extract_objects(
        probabilities, transform, detector.spec, metres_per_unit=job.metres_per_unit
    )
    rows = list(_cell_rows(job, objects))
    table = pa.Table.from_pylist(rows, schema=CELL_SCHEMA)
    summary = {
        "cell": job.cell.id,
        "objects": sum(1 for r in rows if not r["part"]),
        "parts": sum(1 for r in rows if r["part"]),
        "classes": _class_counts(rows),
        "seconds": round(time.perf_counter() - started, 3),
        **timings,
    }
    store = export_store(job.export_dir)
    _write_atomically(store, objects_key(job.cell.id), lambda p: pq.write_table(table, p))
    _write_atomically(store, done_key(job.cell.id), lambda p: p.write_text(json.dumps(summary)))
    return summary


def cell_region(job: CellJob) -> RegionRequest:
    """The cell's core plus the object margin (cores and margin are on the lattice)."""
    pixel, margin = job.pixel_size, OBJECT_MARGIN_PX
    left, _bottom, right, top = job.cell.bounds
    size = round((right - left) / pixel) + 2 * margin  # square: cells are whole windows
    return RegionRequest(
        cog_path=job.cog_path,
        crs_wkt=job.crs_wkt,
        image_gsd=job.image_gsd,
        origin_x=left - margin * pixel,
        origin_y=top + margin * pixel,
        width=size,
        height=size,
        pixel_size=pixel,
    )


def _cell_rows(job: CellJob, objects: list[DetectedObject]):
    pixel = job.pixel_size
    left, bottom, right, top = job.cell.bounds
    core = box(*job.cell.bounds).intersection(box(*job.image_bounds))
    margin = OBJECT_MARGIN_PX * pixel
    region = (left - margin, bottom - margin, right + margin, top + margin)
    aoi = shapely.from_wkb(job.aoi_wkb) if job.aoi_wkb else None
    inner_borders = _inner_borders(job.cell.bounds, job.image_bounds, pixel)
    for obj in objects:
        geometry = obj.geometry
        if not (_touches(geometry.bounds, region, pixel) or _large(geometry.bounds, margin)):
            point = geometry.representative_point()
            if (
                _owns(job.cell.bounds, point)
                and _owns(job.image_bounds, point)
                and (aoi is None or aoi.contains(point))
            ):
                yield _row(obj, geometry, obj.area_m2, job.cell.id, part=False)
            continue
        clipped = geometry.intersection(core)
        if clipped.is_empty or clipped.area <= 0:
            continue
        is_part = inner_borders is not None and clipped.intersects(inner_borders)
        if not is_part and aoi is not None and not aoi.contains(clipped.representative_point()):
            continue
        area = clipped.area * job.metres_per_unit**2
        yield _row(obj, clipped, area, job.cell.id, part=is_part)


def _row(obj: DetectedObject, geometry, area_m2: float, cell_id: str, *, part: bool) -> dict:
    return {
        "geometry": shapely.to_wkb(geometry),
        "class": obj.class_name,
        "score": obj.score,
        "area_m2": area_m2,
        "cell": cell_id,
        "part": part,
    }


def _owns(bounds: Bounds, point) -> bool:
    """Half-open ownership, so a point on a shared border belongs to exactly one cell."""
    left, bottom, right, top = bounds
    return left <= point.x < right and bottom < point.y <= top


def _touches(bounds: Bounds, region: Bounds, pixel: float) -> bool:
    tolerance = EDGE_TOLERANCE_PX * pixel
    return (
        bounds[0] <= region[0] + tolerance
        or bounds[1] <= region[1] + tolerance
        or bounds[2] >= region[2] - tolerance
        or bounds[3] >= region[3] - tolerance
    )


def _large(bounds: Bounds, margin: float) -> bool:
    return bounds[2] - bounds[0] >= margin or bounds[3] - bounds[1] >= margin


def _inner_borders(cell: Bounds, image: Bounds, pixel: float):
    """The cell's borders shared with another cell (not the image's outer edge), as lines."""
    left, bottom, right, top = cell
    tolerance = EDGE_TOLERANCE_PX * pixel
    lines = []
    if left > image[0] + tolerance:
        lines.append([(left, bottom), (left, top)])
    if right < image[2] - tolerance:
        lines.append([(right, bottom), (right, top)])
    if top < image[3] - tolerance:
        lines.append([(left, top), (right, top)])
    if bottom > image[1] + tolerance:
        lines.append([(left, bottom), (right, bottom)])
    return shapely.multilinestrings(lines) if lines else None


def _class_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        if not row["part"]:
            counts[row["class"]] = counts.get(row["class"], 0) + 1
    return counts


def _write_atomically(store: BlobStore, key: str, write) -> None:
    """Write a local staging file, then publish it under `key` in one step."""
    staging = store.staging_path(key)
    try:
        write(staging)
        store.commit(staging, key)
    finally:
        staging.unlink(missing_ok=True)
