"""One export from start to file: plan the cells, sweep them on Dask, merge, write the format.

Shared by `tiledetect detect` and the server's export jobs. Everything an export writes lives
under its own directory (cell results, manifest markers, the output), and the output appears
under its final name only once complete.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import rasterio
import shapely
import shapely.errors
from pyproj import CRS
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from export.cell_task import CellJob
from export.cells import DEFAULT_CELL_PX, CellGrid
from export.merge import ObjectStream
from export.sweep import SweepOptions, SweepState, sweep
from export.writers import Format, Summary, write_objects
from inference.format import DetectorSpec
from inference.windows import WindowGrid
from tiles.metadata import ground_sample_distance


class ExportInputError(ValueError):
    """An export that cannot start as asked (AOI, format, bands); nothing has been started."""


class ExportFailedError(RuntimeError):
    """Every cell of an export failed: there is nothing to write (a disk-full error says so)."""


# The AOI is one area, not a label set: the annotations' total is plenty.
MAX_AOI_VERTICES = 100_000


@dataclass(frozen=True)
class ExportSource:
    """The image and detector of an export, as paths every worker can open."""

    cog_path: str
    onnx_path: str
    spec: DetectorSpec
    image_meta: dict  # bounds, crs_wkt, resolution, gsd, count (the catalogue's fields)


@dataclass
class ExportOutcome:
    state: str  # done | partial | cancelled
    sweep: SweepState
    summary: dict
    seconds: float


def image_meta(path: str | Path) -> dict:
    """The fields of the catalogue's description an export needs, for a file not in it."""
    with rasterio.open(path) as dataset:
        if dataset.crs is None:
            raise ExportInputError(f"{Path(path).name} has no coordinate reference system")
        return {
            "bounds": tuple(dataset.bounds),
            "crs_wkt": dataset.crs.to_wkt(),
            "resolution": tuple(dataset.res),
            "gsd": ground_sample_distance(dataset.crs, dataset.res, dataset.bounds),
            "count": dataset.count,
        }


def aoi_in_image_crs(aoi_wgs84: dict | None, meta: dict) -> BaseGeometry | None:
    """A GeoJSON geometry, Feature or FeatureCollection (WGS84) -> one valid geometry in the
    image's CRS; ExportInputError says what is wrong with it."""
    if aoi_wgs84 is None:
        return None
    try:
        geometry = _geometry_of(aoi_wgs84, _VertexBudget())
    except ExportInputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.ShapelyError) as exc:
        raise ExportInputError(f"the AOI is not a GeoJSON polygon: {exc}") from exc
    if geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise ExportInputError(
            f"the AOI must be a Polygon or MultiPolygon, not {geometry.geom_type}"
        )
    if geometry.is_empty:
        raise ExportInputError("the AOI is empty: it has no area")
    if not geometry.is_valid:
        raise ExportInputError(f"the AOI geometry is invalid: {shapely.is_valid_reason(geometry)}")
    west, south, east, north = geometry.bounds
    if west < -180 or east > 180 or south < -90 or north > 90:
        raise ExportInputError("the AOI has coordinates outside WGS84 longitude/latitude")
    try:
        local = shape(transform_geom("EPSG:4326", meta["crs_wkt"], mapping(geometry)))
    except ValueError as exc:  # a polar or antimeridian AOI the image's CRS cannot hold
        raise ExportInputError(f"the AOI cannot be placed on the image: {exc}") from exc
    if not local.intersects(box(*meta["bounds"])):
        raise ExportInputError("the AOI does not overlap the image")
    return local


class _VertexBudget:
    """Counts positions over the whole AOI, so a huge one is refused before GEOS builds it."""

    def __init__(self) -> None:
        self.used = 0

    def spend(self, count: int) -> None:
        self.used += count
        if self.used > MAX_AOI_VERTICES:
            raise ExportInputError(
                f"the AOI has more than {MAX_AOI_VERTICES} vertices; simplify it"
            )


def _geometry_of(geojson: dict, budget: _VertexBudget) -> BaseGeometry:
    kind = geojson["type"]
    if kind == "FeatureCollection":
        parts = [_geometry_of(f, budget) for f in geojson["features"]]
        if not parts:
            raise ValueError("the FeatureCollection is empty")
        return shapely.union_all(parts)
    if kind == "Feature":
        return _geometry_of(geojson["geometry"], budget)
    if kind == "Polygon":
        _check_rings(geojson["coordinates"], budget)
    elif kind == "MultiPolygon":
        for polygon in geojson["coordinates"]:
            _check_rings(polygon, budget)
    return shape(geojson)


def _check_rings(rings: list, budget: _VertexBudget) -> None:
    """Each ring a closed list of finite [lon, lat] positions (shapely would silently close an
    open ring, and NaN makes GEOS fail with a message about something else)."""
    if not isinstance(rings, list | tuple):
        raise ExportInputError("the AOI polygon's coordinates must be a list of rings")
    for ring in rings:
        if not isinstance(ring, list | tuple) or not all(isinstance(p, list | tuple) for p in ring):
            raise ExportInputError(
                "the AOI is wrongly nested: a polygon is a list of rings, each a list of "
                "[lon, lat] positions"
            )
        budget.spend(len(ring))
        for position in ring:
            if len(position) < 2 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in position
            ):
                raise ExportInputError(f"the AOI position {position!r} is not [lon, lat]")
            if not all(math.isfinite(v) for v in position):
                raise ExportInputError(
                    f"the AOI position {position!r} is not a finite number pair (NaN or infinity)"
                )
        if len(ring) < 4:
            raise ExportInputError("an AOI ring needs at least 4 positions (the first repeated)")
        if list(ring[0]) != list(ring[-1]):
            raise ExportInputError(
                "an AOI ring is not closed: its last position must repeat its first"
            )


def plan_cells(
    source: ExportSource,
    export_dir: str | Path,
    aoi: BaseGeometry | None = None,
    cell_px: int = DEFAULT_CELL_PX,
    gdal_options: dict[str, str] | None = None,
) -> list[CellJob]:
    """The cells of an export; `export_dir` is a blob ref (a directory path or an object URL)."""
    meta = source.image_meta
    windows = WindowGrid.for_image(meta, source.spec)
    grid = CellGrid.for_windows(windows, cell_px)
    aoi_wkb = shapely.to_wkb(aoi) if aoi is not None else None
    return [
        CellJob(
            export_dir=str(export_dir),
            cell=cell,
            cog_path=source.cog_path,
            onnx_path=source.onnx_path,
            crs_wkt=meta["crs_wkt"],
            image_gsd=meta["gsd"],
            image_bounds=tuple(meta["bounds"]),
            pixel_size=windows.pixel_size,
            metres_per_unit=meta["gsd"] / meta["resolution"][0],
            aoi_wkb=aoi_wkb,
            gdal_options=tuple(sorted((gdal_options or {}).items())),
        )
        for cell in grid.cells(aoi)
    ]


def run_export(
    client,
    name: str,
    source: ExportSource,
    jobs: list[CellJob],
    out_path: str | Path,
    fmt: Format,
    target_crs: CRS | None = None,
    options: SweepOptions = SweepOptions(),
    on_progress: Callable[[SweepState], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> ExportOutcome:
    started = time.perf_counter()
    state = sweep(client, name, jobs, options, on_progress, cancelled)
    if state.cancelled:
        return ExportOutcome("cancelled", state, {}, time.perf_counter() - started)
    if state.failed and not state.done:
        first = next(iter(state.failed.values()))
        raise ExportFailedError(f"all {len(state.failed)} cells failed; the first with: {first}")
    summary = write_result(source, jobs, out_path, fmt, target_crs)
    outcome = "partial" if state.failed else "done"
    return ExportOutcome(outcome, state, summary.as_dict(), time.perf_counter() - started)


def write_result(
    source: ExportSource,
    jobs: list[CellJob],
    out_path: str | Path,
    fmt: Format,
    target_crs: CRS | None = None,
) -> Summary:
    """Merge the finished cells' objects into `out_path`, which appears only when complete."""
    if not jobs:
        raise ExportInputError("nothing to export: no cell meets the area")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = out_path.with_name(f".{out_path.stem}.{os.getpid()}.partial{out_path.suffix}")
    first = jobs[0]
    aoi = shapely.from_wkb(first.aoi_wkb) if first.aoi_wkb else None
    stream = ObjectStream(
        first.export_dir, [j.cell.id for j in jobs], tolerance=0.01 * first.pixel_size, aoi=aoi
    )
    source_crs = CRS.from_wkt(source.image_meta["crs_wkt"])
    try:
        summary = write_objects(stream.tables(), staging, fmt, source_crs, target_crs)
        os.replace(staging, out_path)
    finally:
        staging.unlink(missing_ok=True)
    return summary


def remove_staging_files(export_dir: str | Path) -> list[Path]:
    """Delete the half-written files (`.*.partial*`: cells, markers, outputs) a stopped run left
    in an export's folder; call it only while no other run of that export writes there."""
    removed = []
    root = Path(export_dir)
    if not root.is_dir():
        return removed
    for path in root.rglob(".*.partial*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
