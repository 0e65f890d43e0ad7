"""Export jobs in the server: validate a request, record it, and drive its sweep on Dask in a
background thread; resume unfinished exports when the server starts again.

The Dask client is made on first use: an in-process LocalCluster by default, or the scheduler
at `TILEDETECT_DASK_SCHEDULER`, whose workers must see the same blob store.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import TypeVar

from pyproj import CRS
from pyproj.exceptions import CRSError

from catalog.blobstore import BlobStore, gdal_options_for_path
from catalog.db import SkipWhileUnavailable, is_unavailable, retry_unavailable, unavailable_reason
from catalog.errors import ConflictError, failure_reason
from catalog.exports import ExportStore, export_prefix
from catalog.images import ImageCatalog
from catalog.models import ExportRecord, ExportState, utcnow
from catalog.owners import process_owner
from catalog.projects import owner
from catalog.quotas import Quotas
from export.cell_task import CellJob
from export.cluster import connect
from export.run import (
    ExportInputError,
    ExportSource,
    aoi_in_image_crs,
    plan_cells,
    remove_staging_files,
    run_export,
    write_result,
)
from export.sweep import SweepOptions, SweepState
from export.writers import FORMATS, format_named
from export.zones import (
    ZONE_FORMATS,
    ZonesError,
    count_zones,
    parse_zones,
    read_objects,
    write_zone_counts,
)
from server.detection_layers import DetectionLayers
from server.settings import Settings

log = logging.getLogger("tiledetect.exports")

T = TypeVar("T")

LAYER_SOURCE = "objects.gpkg"  # every finished export also keeps this, for low-zoom tiles


class ExportService:
    def __init__(
        self,
        settings: Settings,
        store: ExportStore,
        images: ImageCatalog,
        layers: DetectionLayers,
        blobs: BlobStore,
        quotas: Quotas,
    ) -> None:
        self.settings = settings
        self.quotas = quotas
        self.store = store
        self.images = images
        self.layers = layers
        self.blobs = blobs
        self._client = None
        self._cluster = None
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._cancel: set[str] = set()
        self._stopping = threading.Event()
        self._keeper: threading.Thread | None = None

    # Requests ----------------------------------------------------------------------------------

    def start(
        self,
        detector_id: str,
        image_id: str,
        fmt: str = "geojson",
        aoi: dict | None = None,
        crs: str | None = None,
        version: int | None = None,
        project: str | None = None,
    ) -> ExportRecord:
        """Validate everything first; nothing is recorded or started for a bad request.
        With `project`, the detector and the image must both be that project's."""
        output = format_named(fmt)
        if crs is not None:
            try:
                CRS.from_user_input(crs)
            except CRSError as exc:
                raise ExportInputError(f"unknown CRS {crs!r}: {exc}") from exc
        # 404 / 409 / bands that don't fit
        layer = self.layers.layer(detector_id, image_id, version, project)
        image = self.images.get(image_id)
        aoi_in_image_crs(aoi, image.meta)
        project_id = owner(self.layers.detectors.get(detector_id).project_id)
        with self.quotas.admit(project_id, "export"):
            record = self.store.create(
                project_id=project_id,
                detector_id=detector_id,
                version_id=layer.version_id,
                version_number=self.layers.detectors.version(detector_id, version).number,
                image_id=image_id,
                format=output.name,
                crs=crs,
                aoi=aoi,
            )
        self._launch(record.id)
        return record  # as stored: a second read that a database outage failed would hide it

    def cancel(self, export_id: str, project: str | None = None) -> ExportRecord:
        """Stop an export, whichever server process drives it: the driver's sweep sees the
        request in the database; an export no live process drives is ended here."""
        record = self.store.get(export_id, project)
        if record.state in ExportState.UNFINISHED:
            with self._lock:
                running = export_id in self._threads
                if running:
                    self._cancel.add(export_id)
            if not running:
                self.store.request_cancel(export_id)
                orphan = self.store.orphaned(record, self.settings.export_lease_s)
                if (orphan and self.store.claim(record)) or record.owner == process_owner():
                    self.store.finish(export_id, ExportState.CANCELLED)
        return self.store.get(export_id)

    def resume(self, export_id: str, project: str | None = None) -> ExportRecord:
        """Continue an export that did not finish cleanly; cells already done are skipped.
        One that a live server process drives is left to it."""
        record = self.store.get(export_id, project)
        if record.state == ExportState.DONE:
            return record
        with self._lock:
            if export_id in self._threads:
                return record
            self._cancel.discard(export_id)
        if record.state in ExportState.UNFINISHED:
            mine = record.owner == process_owner()
            orphan = self.store.orphaned(record, self.settings.export_lease_s)
            if mine or (orphan and self.store.claim(record)):
                self._launch(export_id)
        else:
            with self.quotas.admit(owner(record.project_id), "export"):  # running again
                reopened = self.store.reopen(export_id)
            if reopened:
                self._launch(export_id)
        return self.store.get(export_id)

    def resume_unfinished(self, *, startup: bool = True) -> list[str]:
        """On start-up, and then periodically: adopt the exports whose process died (a previous
        server, another worker or replica) and drive them here. Each is claimed atomically, so
        several processes starting at once resume it exactly once."""
        me = process_owner()
        adopted = []
        for record in self.store.unfinished():
            with self._lock:
                if record.id in self._threads:
                    continue
            # At start-up this process's own unfinished exports were left by an earlier app in
            # it (tests reopen one); later they are this app's, between records and threads.
            if (startup and record.owner == me) or (
                self.store.orphaned(record, self.settings.export_lease_s)
                and self.store.claim(record)
            ):
                self._launch(record.id)
                adopted.append(record.id)
        self._start_keeper()
        return adopted

    def zone_counts(
        self, export_id: str, collection: object, fmt: str, project: str | None = None
    ) -> bytes:
        """Counts per zone and class of a finished export's objects, as a file in `fmt`
        (export.zones); computed on request, nothing stored."""
        if fmt not in ZONE_FORMATS:
            known = ", ".join(ZONE_FORMATS)
            raise ZonesError(f"zone counts come as one of {known}, not {fmt!r}")
        zones = parse_zones(collection)
        record = self.store.get(export_id, project)
        key = self.result_key(record) if record.state in ("done", "partial") else None
        if key is None:
            raise ConflictError(f"export {export_id} is {record.state}; its objects are not ready")
        classes = self.layers.detectors.get(record.detector_id).classes
        geometries, object_classes, areas = read_objects(
            self.blobs.local_path(key), FORMATS[record.format]
        )
        counts = count_zones(zones, geometries, object_classes, areas, classes)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"zones{ZONE_FORMATS[fmt][1]}"
            write_zone_counts(counts, path, fmt)
            return path.read_bytes()

    def result_key(self, record: ExportRecord) -> str | None:
        """The blob key of the finished export's file, when it has one."""
        if record.result_key and self.blobs.exists(record.result_key):
            return record.result_key
        return None

    def layer_source(self, version_id: str, image_id: str):
        """The object file of the newest whole-image export (a local copy), or None."""
        record = self.store.latest_done(version_id, image_id)
        if record is None or record.aoi is not None:
            return None
        try:
            return self.blobs.local_path(f"{export_prefix(record.id)}/{LAYER_SOURCE}")
        except FileNotFoundError:
            return None

    # Running -----------------------------------------------------------------------------------

    def client(self):
        with self._lock:
            if self._client is None:
                self._client, self._cluster = connect(
                    self.settings.dask_scheduler, threads=self.settings.dask_threads
                )
            return self._client

    def _start_keeper(self) -> None:
        with self._lock:
            if self._keeper is not None:
                return
            self._keeper = threading.Thread(target=self._keep, name="export-leases", daemon=True)
        self._keeper.start()

    def _keep(self) -> None:
        """Renew this process's leases; adopt exports whose owner has gone since."""
        period = self.settings.export_lease_s / 4
        while not self._stopping.wait(period):
            try:
                self.store.renew_leases()
                adopted = self.resume_unfinished(startup=False)
                if adopted:
                    log.warning("adopted %d orphaned export(s): %s", len(adopted), adopted)
            except Exception as exc:  # the database may be briefly away; try next period
                if is_unavailable(exc):
                    log.warning("renewing export leases failed: %s", unavailable_reason(exc))
                else:
                    log.exception("renewing export leases failed")

    def _cancel_requested(self, export_id: str) -> Callable[[], bool]:
        """The sweep's cancellation test: asked here, asked in the database through another
        process (read at most once a second), or this process is stopping."""
        last = {"time": 0.0, "asked": False}
        # While the database is unavailable no other process can ask either: the last answer holds.
        skip = SkipWhileUnavailable(f"cancellation checks of export {export_id}")

        def read() -> None:
            last["asked"] = bool(self.store.get(export_id).cancel_requested)

        def asked() -> bool:
            if export_id in self._cancel or self._stopping.is_set():
                return True
            now = time.monotonic()
            if now - last["time"] >= 1.0:
                last["time"] = now
                skip(read)
            return last["asked"]

        return asked

    def _launch(self, export_id: str) -> None:
        thread = threading.Thread(
            target=self._run, args=(export_id,), name=f"export-{export_id}", daemon=True
        )
        with self._lock:
            self._threads[export_id] = thread
        thread.start()

    def _run(self, export_id: str) -> None:
        try:
            self._sweep(export_id)
        except Exception as exc:  # a job must end in a truthful state, whatever went wrong
            log.exception("export %s failed", export_id)
            if self._stopping.is_set():
                return  # torn down mid-sweep: stays unfinished, adopted by the next process
            self._remove_outputs(export_id)  # a failed export lists no file; its cells stay
            error = f"{type(exc).__name__}: {failure_reason(exc, self._writing_dir(export_id))}"
            try:
                self._waiting(
                    export_id, lambda: self.store.finish(export_id, ExportState.FAILED, error=error)
                )
            except Exception:  # the database never came back: adopted by the next process
                log.exception("the failure of export %s could not be recorded", export_id)
        finally:
            with self._lock:
                self._threads.pop(export_id, None)
                self._cancel.discard(export_id)

    def _sweep(self, export_id: str) -> None:
        # Planning reads and marks the record, so it waits for an unavailable database; the cells
        # then run without it (progress skipped) and the result waits for it again.
        record, source, jobs = self._waiting(export_id, lambda: self._plan(export_id))
        progress = _ProgressWriter(self.store, export_id, time.monotonic())
        output = FORMATS[record.format]
        out_key = f"{export_prefix(export_id)}/result{output.extension}"
        staging = self.blobs.staging_path(out_key)  # merged locally, then published
        try:
            self._export(record, source, jobs, output, staging, out_key, progress)
        finally:
            staging.unlink(missing_ok=True)

    def _plan(self, export_id: str) -> tuple[ExportRecord, ExportSource, list[CellJob]]:
        """The export's source and cells; its record marked running."""
        record = self.store.get(export_id)
        layer = self.layers.layer(record.detector_id, record.image_id, record.version_number)
        image = self.images.get(record.image_id)
        source = ExportSource(
            cog_path=layer.cog_path,
            onnx_path=self.layers.detectors.onnx_ref(
                self.layers.detectors.version(record.detector_id, record.version_number)
            ),
            spec=layer.spec,
            image_meta=image.meta,
        )
        prefix = export_prefix(export_id)
        if self.blobs.is_local:
            # This process owns the export now: half-written files of an earlier run are garbage.
            # (An object store never shows a half-written object: its staging is local.)
            remove_staging_files(self.blobs.path(prefix))
        jobs = plan_cells(
            source,
            self.blobs.ref(prefix),  # cells are written straight into the store by the workers
            aoi_in_image_crs(record.aoi, image.meta),
            self.settings.export_cell_px,
            gdal_options=self.blobs.gdal_options() | gdal_options_for_path(layer.cog_path),
        )
        self.store.update(
            export_id,
            state=ExportState.RUNNING,
            cells_total=len(jobs),
            started_at=record.started_at or utcnow(),
        )
        return record, source, jobs

    def _export(self, record, source, jobs, output, staging, out_key, progress) -> None:
        export_id, prefix = record.id, export_prefix(record.id)
        outcome = run_export(
            self.client(),
            export_id,
            source,
            jobs,
            staging,
            output,
            CRS.from_user_input(record.crs) if record.crs else None,
            SweepOptions(
                retries=self.settings.export_retries,
                backoff_s=self.settings.export_backoff_s,
                resources=self.settings.dask_resources(),
            ),
            on_progress=progress,
            cancelled=self._cancel_requested(export_id),
        )
        # From here on the sweep's outcome is recorded: each write waits for the database.
        current = self._waiting(export_id, lambda: self.store.get(export_id))
        if outcome.state == "cancelled":
            asked = export_id in self._cancel or current.cancel_requested
            if self._stopping.is_set() and not asked:
                return  # server shutting down: stays `running`, resumed on the next start
            self._waiting(export_id, lambda: self.store.finish(export_id, ExportState.CANCELLED))
            return
        if current.owner != process_owner():
            log.warning("export %s was taken over by another process; not publishing", export_id)
            return
        result_bytes = self.blobs.commit(staging, out_key)
        layer_key = f"{prefix}/{LAYER_SOURCE}"
        if output.name != "gpkg" and record.aoi is None:
            layer_staging = self.blobs.staging_path(layer_key)
            try:
                write_result(source, jobs, layer_staging, format_named("gpkg"))
                self.blobs.commit(layer_staging, layer_key)
            finally:
                layer_staging.unlink(missing_ok=True)
        elif record.aoi is None:
            self.blobs.copy(out_key, layer_key)
        published = self._waiting(
            export_id,
            lambda: self.store.finish(
                export_id,
                ExportState.PARTIAL if outcome.state == "partial" else ExportState.DONE,
                summary=outcome.summary,
                objects=outcome.summary.get("objects", 0),
                failures=outcome.sweep.failed or None,
                cells_done=len(outcome.sweep.done),
                cells_failed=len(outcome.sweep.failed),
                result_key=out_key,
                result_bytes=result_bytes,
                eta_seconds=0.0,
            ),
        )
        if not published:
            log.warning("export %s ended elsewhere while it was merged here", export_id)

    def _waiting(self, export_id: str, call: Callable[[], T]) -> T:
        """`call()`, waiting for the database if it is unavailable (not past this process's end:
        an unfinished export is adopted by the next one)."""
        return retry_unavailable(
            call, f"export {export_id}", self.settings.database_wait_s, self._stopping
        )

    def _writing_dir(self, export_id: str):
        """The local folder this export's files are written in (its free space tells a full disk
        behind GDAL's vague write errors): the export's folder, or the object store's staging."""
        return self.blobs.staging_path(f"{export_prefix(export_id)}/result").parent

    def _remove_outputs(self, export_id: str) -> None:
        prefix = export_prefix(export_id)
        for key in self.blobs.list(prefix):
            name = key.rsplit("/", 1)[-1]
            if name.startswith("result.") or name == LAYER_SOURCE:
                self.blobs.delete_prefix(key)
        if self.blobs.is_local:
            remove_staging_files(self.blobs.path(prefix))

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout=10)
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()


class _ProgressWriter:
    """Writes sweep progress to the record at most twice a second, with a time-left estimate."""

    def __init__(self, store: ExportStore, export_id: str, started: float) -> None:
        self.store = store
        self.export_id = export_id
        self.started = started
        self.first_done: int | None = None
        self.last = 0.0
        self.skip = SkipWhileUnavailable(f"progress of export {export_id}")

    def __call__(self, state: SweepState) -> None:
        now = time.monotonic()
        done = len(state.done)
        if self.first_done is None:
            self.first_done = done  # cells done by an earlier run don't count for the rate
        if now - self.last < 0.5 and done + len(state.failed) < state.total:
            return
        self.last = now
        fresh = done - self.first_done
        remaining = state.total - done - len(state.failed)
        eta = (now - self.started) / fresh * remaining if fresh else None
        self.skip(
            self.store.update,
            self.export_id,
            cells_done=done,
            cells_failed=len(state.failed),
            objects=state.objects,
            failures=dict(state.failed) or None,
            eta_seconds=round(eta, 1) if eta is not None else None,
        )


def elapsed_seconds(record: ExportRecord) -> float | None:
    if record.started_at is None:
        return None
    end = record.finished_at or utcnow()
    start = record.started_at
    if start.tzinfo is None:  # SQLite returns naive datetimes
        start = start.replace(tzinfo=UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return round((end - start).total_seconds(), 1)
