"""Image records: created while ingesting, ready once their COG is complete, resolvable to a COG."""

from __future__ import annotations

import threading

from cachetools import TTLCache
from sqlalchemy import select

from catalog.blobstore import BlobStore
from catalog.db import Database
from catalog.errors import ConflictError, ImageNotFoundError, ImageNotReadyError
from catalog.models import (
    DEFAULT_PROJECT,
    ImageRecord,
    ImageStatus,
    JobRecord,
    JobStatus,
    new_id,
)
from catalog.projects import owner, scoped, visible
from tiles.metadata import ImageMetadata

# Tile requests resolve an image id on every call; a short TTL keeps that off the database
# while an image deleted by another process disappears within seconds.
_RESOLVE_TTL_SECONDS = 5.0


class ImageCatalog:
    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs
        # image id -> (COG path, project): the scope is checked on cached entries too.
        self._cog_paths: TTLCache[str, tuple[str, str]] = TTLCache(
            maxsize=4096, ttl=_RESOLVE_TTL_SECONDS
        )
        self._lock = threading.Lock()

    def create_processing(
        self,
        name: str,
        source_bytes: int | None,
        project: str = DEFAULT_PROJECT,
        job: JobRecord | None = None,
    ) -> ImageRecord:
        """A new image being ingested; with `job` (its ingest job), both are stored in one
        transaction, so a failure (the database unavailable) leaves neither."""
        image_id = new_id()
        record = ImageRecord(
            id=image_id,
            project_id=project,
            name=name,
            status=ImageStatus.PROCESSING,
            cog_key=f"images/{image_id}/{image_id}.tif",
            source_bytes=source_bytes,
        )
        with self.db.transaction() as session:
            session.add(record)
            if job is not None:
                session.flush()  # the job refers to the image
                job.image_id = image_id
                session.add(job)
        return record

    def mark_ready(self, image_id: str, metadata: ImageMetadata, cog_bytes: int) -> ImageRecord:
        with self.db.transaction() as session:
            record = session.get(ImageRecord, image_id)
            if record is None:
                raise ImageNotFoundError(f"image {image_id} was removed during ingest")
            record.meta = metadata.as_dict()
            record.gsd = metadata.gsd
            record.cog_bytes = cog_bytes
            record.status = ImageStatus.READY
            return record

    def create_remote(
        self,
        name: str,
        url: str,
        gdal_path: str,
        metadata: ImageMetadata,
        size: int | None,
        project: str = DEFAULT_PROJECT,
    ) -> ImageRecord:
        """Record an existing COG elsewhere (validated by the caller): ready at once, no copy."""
        record = ImageRecord(
            id=new_id(),
            name=name,
            status=ImageStatus.READY,
            cog_key=None,
            remote_url=url,
            remote_gdal_path=gdal_path,
            cog_bytes=size,
            source_bytes=size,
            meta=metadata.as_dict(),
            gsd=metadata.gsd,
            project_id=project,
        )
        with self.db.transaction() as session:
            session.add(record)
        return record

    def get(self, image_id: str, project: str | None = None) -> ImageRecord:
        with self.db.transaction() as session:
            record = session.get(ImageRecord, image_id)
        if record is None or not visible(record.project_id, project):
            raise ImageNotFoundError(f"no image with id {image_id!r}")
        return record

    def list(self, status: str | None = None, project: str | None = None) -> list[ImageRecord]:
        query = scoped(select(ImageRecord), ImageRecord.project_id, project)
        query = query.order_by(ImageRecord.created_at)
        if status:
            query = query.where(ImageRecord.status == status)
        with self.db.transaction() as session:
            return list(session.scalars(query))

    def cog_path(self, image_id: str, project: str | None = None) -> str:
        """The path GDAL opens for a ready image. The only way requests reach a raster."""
        with self._lock:
            cached = self._cog_paths.get(image_id)
        if cached:
            path, image_project = cached
            if not visible(image_project, project):
                raise ImageNotFoundError(f"no image with id {image_id!r}")
            return path
        record = self.get(image_id, project)
        if record.status == ImageStatus.READY and record.remote_gdal_path:
            path = record.remote_gdal_path
        elif record.status != ImageStatus.READY or not record.cog_key:
            raise ImageNotReadyError(f"image {image_id} is still being ingested")
        else:
            path = self.blobs.gdal_path(record.cog_key)
        with self._lock:
            self._cog_paths[image_id] = (path, owner(record.project_id))
        return path

    def delete(self, image_id: str, project: str | None = None) -> None:
        with self.db.transaction() as session:
            record = session.get(ImageRecord, image_id)
            if record is None or not visible(record.project_id, project):
                raise ImageNotFoundError(f"no image with id {image_id!r}")
            active = session.scalar(
                select(JobRecord.id).where(
                    JobRecord.image_id == image_id,
                    JobRecord.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
                )
            )
            if active:
                raise ConflictError(
                    f"image {image_id} is being ingested by job {active}; delete it when that ends"
                )
            remote = record.remote_url is not None
            session.delete(record)
        self._forget(image_id)
        if not remote:  # a registered remote COG is not ours: only its record goes
            self.blobs.delete_prefix(f"images/{image_id}")

    def discard(self, image_id: str) -> None:
        """Remove an image whose ingest failed: its record and whatever files it had."""
        with self.db.transaction() as session:
            record = session.get(ImageRecord, image_id)
            if record is not None:
                session.delete(record)
        self._forget(image_id)
        self.blobs.delete_prefix(f"images/{image_id}")

    def _forget(self, image_id: str) -> None:
        with self._lock:
            self._cog_paths.pop(image_id, None)
