"""The long-lived objects behind the API and the CLI, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass

from catalog.blobstore import LocalBlobStore
from catalog.db import Database
from catalog.images import ImageCatalog
from catalog.ingest import Ingestor
from catalog.jobs import JobStore
from server.settings import Settings
from tiles.source import SourceLimits


@dataclass
class Services:
    settings: Settings
    db: Database
    images: ImageCatalog
    jobs: JobStore
    ingestor: Ingestor

    def close(self) -> None:
        self.db.dispose()


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    blobs = LocalBlobStore(settings.blob_dir)
    images = ImageCatalog(db, blobs)
    jobs = JobStore(db)
    ingestor = Ingestor(images, jobs, SourceLimits(max_bands=settings.max_image_bands))
    return Services(settings=settings, db=db, images=images, jobs=jobs, ingestor=ingestor)
