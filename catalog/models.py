"""Catalogue tables. Portable column types only, so SQLite and PostgreSQL behave the same."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator):
    """Timestamps in UTC that come back timezone-aware: SQLite drops the offset and would hand
    back naive datetimes, which the API would then send without one (not RFC 3339)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


# Rows without a project (catalogues made before projects existed) belong to this one; it is also
# the one implicit project of a server with auth off.
DEFAULT_PROJECT = "default"


def project_column() -> Mapped[str | None]:
    """Nullable so that `db.add_missing_columns` can add it to an existing table."""
    return mapped_column(String(32), nullable=True, index=True)


class ProjectRecord(Base):
    """A workspace: images, detectors, exports and jobs belong to one; API keys open one."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # This project's own limits over the server's (catalog.quotas.ProjectLimits field -> value,
    # None: no limit); null: the server's settings.
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ApiKeyRecord(Base):
    """An API key of a project. Only a hash of the secret is kept (see catalog/projects.py)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255), default="")
    prefix: Mapped[str] = mapped_column(String(32))  # the token's first characters, for lists
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class ImageStatus:
    PROCESSING = "processing"
    READY = "ready"


class JobStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    FINISHED = (SUCCEEDED, FAILED)


class ImageRecord(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str | None] = project_column()
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=ImageStatus.PROCESSING, index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    cog_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    cog_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Filled once the COG is complete (status ready); see tiles.metadata.ImageMetadata.
    gsd: Mapped[float | None] = mapped_column(Float, nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # A COG registered by URL and read where it is (never copied, never deleted by us): the URL
    # as given, and what GDAL opens (/vsicurl/ or /vsis3/). Null for ingested images.
    remote_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    remote_gdal_path: Mapped[str | None] = mapped_column(Text, nullable=True)


class JobRecord(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str | None] = project_column()
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Lets a restarted server tell its own orphaned jobs from a live CLI ingest's.
    owner: Mapped[str] = mapped_column(String(128), default="")
    image_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("images.id", ondelete="SET NULL"), nullable=True, index=True
    )
    detector_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class DetectorRecord(Base):
    __tablename__ = "detectors"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str | None] = project_column()
    name: Mapped[str] = mapped_column(String(255))
    classes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # One "#rrggbb" per class, chosen at creation; trained versions carry them in their spec.
    colors: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class DetectorVersionRecord(Base):
    """One trained (or imported) ONNX file of a detector; versions only ever get added."""

    __tablename__ = "detector_versions"
    # Two trainings finishing at once cannot both become version n.
    __table_args__ = (UniqueConstraint("detector_id", "number"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    detector_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("detectors.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    onnx_key: Mapped[str] = mapped_column(String(512))
    onnx_bytes: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    source: Mapped[str] = mapped_column(String(64), default="import")
    # The annotation set's revision a trained version learnt from (its metrics score that one).
    annotation_revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ExportState:
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    PARTIAL = "partial"  # finished, but some cells failed every attempt (listed in `failures`)
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNFINISHED = (QUEUED, RUNNING)


class ExportRecord(Base):
    """A bulk export of one detector version over one image (or an AOI of it)."""

    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str | None] = project_column()
    detector_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("detectors.id", ondelete="CASCADE"), index=True
    )
    version_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("detector_versions.id", ondelete="CASCADE"), index=True
    )
    version_number: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("images.id", ondelete="CASCADE"), index=True
    )
    format: Mapped[str] = mapped_column(String(16))
    crs: Mapped[str | None] = mapped_column(Text, nullable=True)  # requested output CRS
    aoi: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # GeoJSON, WGS84
    state: Mapped[str] = mapped_column(String(16), default=ExportState.QUEUED, index=True)
    cells_total: Mapped[int] = mapped_column(Integer, default=0)
    cells_done: Mapped[int] = mapped_column(Integer, default=0)
    cells_failed: Mapped[int] = mapped_column(Integer, default=0)
    objects: Mapped[int] = mapped_column(Integer, default=0)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    failures: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # cell -> error
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    result_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The process driving the sweep (catalog.owners), renewing its lease while it runs; another
    # process adopts the export only once that owner is dead or its lease has lapsed.
    owner: Mapped[str] = mapped_column(String(128), default="")
    lease_renewed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Asked through any server process; the owner's sweep sees it and stops.
    cancel_requested: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class AnnotationSetRecord(Base):
    """A detector's annotations: the validated GeoJSON as posted, and a revision counter."""

    __tablename__ = "annotation_sets"

    detector_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("detectors.id", ondelete="CASCADE"), primary_key=True
    )
    collection: Mapped[dict[str, Any]] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
