"""API response models (they are also the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from catalog.models import ImageRecord, JobRecord
from inference.format import DEFAULT_COLORS
from tiles.rendering import default_tile_params


class JobOut(BaseModel):
    id: str
    kind: str
    status: str
    progress: float
    message: str
    error: str | None = None
    result: dict[str, Any] | None = None
    image_id: str | None = None
    detector_id: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None

    @classmethod
    def of(cls, job: JobRecord) -> JobOut:
        return cls.model_validate(job, from_attributes=True)


class RemoteImageRequest(BaseModel):
    url: str = Field(
        max_length=2048,
        description="https://host/path.tif, http://... or s3://bucket/key.tif of an existing COG "
        "on a host of TILEDETECT_REMOTE_COG_HOSTS",
    )
    name: str | None = Field(None, max_length=255)


class ImageOut(BaseModel):
    id: str
    name: str
    status: str
    created_at: datetime
    source_bytes: int | None = None
    cog_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    count: int | None = None
    dtype: str | None = None
    crs: str | None = None
    bounds: list[float] | None = None
    bounds_wgs84: list[float] | None = None
    gsd: float | None = None
    resolution: list[float] | None = None
    nodata: float | None = None
    mask: str | None = None
    band_names: list[str] | None = None
    statistics: dict[str, dict[str, float | None]] | None = None
    minzoom: int | None = None
    maxzoom: int | None = None
    overviews: list[int] | None = None
    tile_params: str | None = None
    remote_url: str | None = None  # a registered remote COG (read in place, never copied)
    links: dict[str, str] = {}

    @classmethod
    def of(cls, image: ImageRecord, base_url: str) -> ImageOut:
        meta = image.meta or {}
        fields = {key: meta.get(key) for key in cls.model_fields if key in meta}
        links: dict[str, str] = {}
        params = None
        if image.status == "ready":
            root = f"{base_url}api/images/{image.id}"
            params = "&".join(f"{k}={v}" for k, v in default_tile_params(meta))
            suffix = f"?{params}" if params else ""
            links = {
                "self": root,
                "tiles": f"{root}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png{suffix}",
                "tilejson": f"{root}/WebMercatorQuad/tilejson.json{suffix}",
                "wmts": f"{root}/WMTSCapabilities.xml{suffix}",
                "info": f"{root}/info",
                "statistics": f"{root}/statistics",
                "preview": f"{root}/preview.png{suffix}",
            }
        return cls(
            id=image.id,
            name=image.name,
            status=image.status,
            created_at=image.created_at,
            source_bytes=image.source_bytes,
            cog_bytes=image.cog_bytes,
            tile_params=params,
            remote_url=image.remote_url,
            links=links,
            **fields,
        )


class IngestAccepted(BaseModel):
    image: ImageOut
    job: JobOut


class DetectorVersionOut(BaseModel):
    id: str
    number: int
    created_at: datetime
    source: str
    onnx_bytes: int
    annotation_revision: int | None = None
    metrics: dict[str, Any] | None = None


def detector_colors(detector, latest_spec: dict | None) -> list[str]:
    """A colour per class: the served version's, else the creator's choice, else the palette."""
    if latest_spec and len(latest_spec.get("colors", [])) == len(detector.classes):
        return list(latest_spec["colors"])
    if detector.colors and len(detector.colors) == len(detector.classes):
        return list(detector.colors)
    return [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(len(detector.classes))]


class DetectorOut(BaseModel):
    id: str
    name: str
    classes: list[str]
    colors: list[str]  # one per class: the latest version's, else those chosen at creation
    created_at: datetime
    resolution_m: float | None = None
    spec: dict[str, Any] | None = None  # of the latest version
    execution_provider: str | None = None
    versions: list[DetectorVersionOut] = []

    @classmethod
    def of(cls, detector, versions: list, provider: str | None) -> DetectorOut:
        latest = versions[-1].spec if versions else None
        return cls(
            id=detector.id,
            name=detector.name,
            classes=detector.classes,
            colors=detector_colors(detector, latest),
            created_at=detector.created_at,
            resolution_m=latest["resolution_m"] if latest else None,
            spec=latest,
            execution_provider=provider,
            versions=[DetectorVersionOut.model_validate(v, from_attributes=True) for v in versions],
        )


class ExportRequest(BaseModel):
    format: str = Field("geojson", description="geojson (WGS84), gpkg, fgb or parquet.")
    aoi: dict[str, Any] | None = Field(
        None, description="GeoJSON Polygon/MultiPolygon (or Feature) in WGS84; default the image."
    )
    crs: str | None = Field(
        None, description="Output CRS for gpkg/fgb/parquet (e.g. EPSG:4326); default the image's."
    )
    version: int | None = Field(None, ge=1, description="Detector version; default the latest.")


class ExportOut(BaseModel):
    id: str
    detector_id: str
    version: int
    image_id: str
    format: str
    crs: str | None
    aoi: dict[str, Any] | None
    state: str
    cells_total: int
    cells_done: int
    cells_failed: int
    objects: int
    failures: dict[str, str] | None
    summary: dict[str, Any] | None
    error: str | None
    elapsed_seconds: float | None
    eta_seconds: float | None
    result_bytes: int | None
    download_url: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, record, elapsed: float | None) -> ExportOut:
        finished = record.state in ("done", "partial") and record.result_key
        return cls(
            id=record.id,
            detector_id=record.detector_id,
            version=record.version_number,
            image_id=record.image_id,
            format=record.format,
            crs=record.crs,
            aoi=record.aoi,
            state=record.state,
            cells_total=record.cells_total,
            cells_done=record.cells_done,
            cells_failed=record.cells_failed,
            objects=record.objects,
            failures=record.failures,
            summary=record.summary,
            error=record.error,
            elapsed_seconds=elapsed,
            eta_seconds=record.eta_seconds,
            result_bytes=record.result_bytes,
            download_url=f"/api/exports/{record.id}/download" if finished else None,
            created_at=record.created_at,
            finished_at=record.finished_at,
        )


class DetectorCreate(BaseModel):
    name: str = Field(..., min_length=1, max_length=255)
    classes: list[str] = Field(..., min_length=1, description="Object classes, e.g. ['tree'].")
    colors: list[str] | None = Field(
        None, description="One '#rrggbb' per class for overlays and vectors (default: a palette)."
    )


class PrefillRequest(BaseModel):
    area: dict[str, Any] = Field(
        description="A GeoJSON Polygon (WGS84): the new training area to fill with labels."
    )
    version: int | None = Field(None, ge=1, description="The version to ask (default: latest).")


class TrainRequest(BaseModel):
    seconds: float | None = Field(
        None, gt=0, le=3600, description="Training budget; default suits the hardware."
    )
    steps: int | None = Field(
        None, ge=1, le=100_000, description="Train exactly this many steps instead (repeatable)."
    )


class ProjectLimitsOut(BaseModel):
    """A project's limits; null: no limit."""

    trainings: int | None = Field(None, description="Trainings queued or running at once")
    exports: int | None = Field(None, description="Exports queued or running at once")
    storage_bytes: int | None = Field(None, description="COGs, detector models, export results")
    upload_bytes: int | None = Field(None, description="One image upload (within the server's)")
    requests_per_minute: int | None = Field(None, description="Per API key")


class ProjectUsageOut(BaseModel):
    images: int
    image_bytes: int = Field(description="Ready COGs, and uploads still being ingested")
    model_bytes: int = Field(description="Every detector version's ONNX file")
    export_bytes: int = Field(description="Finished export results")
    storage_bytes: int = Field(description="The three above: what the storage limit counts")
    trainings_running: int
    exports_running: int
    exports_finished: int
    objects_exported: int = Field(description="Objects in every finished export")


class ProjectOut(BaseModel):
    id: str
    name: str
    limits: ProjectLimitsOut
    usage: ProjectUsageOut
