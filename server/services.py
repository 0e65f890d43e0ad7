"""The long-lived objects behind the API and the CLI, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass

from catalog.annotations import AnnotationStore
from catalog.blobstore import BlobStore, apply_gdal_options, gdal_options_for, open_blob_store
from catalog.db import Database
from catalog.detectors import DetectorCatalog
from catalog.exports import ExportStore
from catalog.images import ImageCatalog
from catalog.ingest import Ingestor
from catalog.jobs import JobStore
from catalog.projects import ApiKeyStore, ProjectStore
from catalog.quotas import Quotas
from catalog.remote import RemoteCogs
from inference.cache import ProbabilityCache, RenderedTileCache
from inference.engine import DetectionEngine
from inference.session import available_providers
from server.detection_layers import DetectionLayers
from server.exports import ExportService
from server.settings import Settings
from server.training import TrainingService
from tiles.source import SourceLimits


@dataclass
class Services:
    settings: Settings
    db: Database
    images: ImageCatalog
    jobs: JobStore
    ingestor: Ingestor
    remote_cogs: RemoteCogs
    detectors: DetectorCatalog
    layers: DetectionLayers
    engine: DetectionEngine
    rendered_tiles: RenderedTileCache
    exports: ExportService
    training: TrainingService
    projects: ProjectStore
    keys: ApiKeyStore
    quotas: Quotas

    def close(self) -> None:
        self.exports.close()
        self.engine.close()
        self.db.dispose()


def default_batch_size(settings: Settings) -> int:
    """Batching pays on a GPU; on CPU one window per call is as fast (bench/detection_tiles.py)."""
    if settings.detection_batch_size:
        return settings.detection_batch_size
    return 8 if available_providers()[0] == "CUDAExecutionProvider" else 1


def open_blob_store_for(settings: Settings) -> BlobStore:
    """The configured data location, with GDAL set up to read it (and s3:// remote COGs)."""
    blobs = open_blob_store(
        settings.blob_location(),
        cache_dir=settings.blob_cache_dir,
        staging_dir=settings.staging_dir,
    )
    apply_gdal_options(blobs.gdal_options())
    if any(h.startswith("s3://") for h in settings.remote_hosts()):
        apply_gdal_options(gdal_options_for("s3"))
    return blobs


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    projects = ProjectStore(db)
    projects.ensure_default()
    blobs = open_blob_store_for(settings)
    images = ImageCatalog(db, blobs)
    jobs = JobStore(db)
    limits = SourceLimits(
        max_bands=settings.max_image_bands,
        max_pixels=settings.max_image_pixels,
        max_expansion=settings.max_image_expansion,
    )
    ingestor = Ingestor(images, jobs, limits, settings.database_wait_s)
    detectors = DetectorCatalog(db, blobs)
    engine = DetectionEngine(
        ProbabilityCache(settings.detection_cache_dir, settings.detection_cache_bytes),
        threads=settings.detection_threads,
        max_batch=default_batch_size(settings),
        max_wait_s=settings.detection_batch_wait_ms / 1000,
    )
    layers = DetectionLayers(images, detectors)
    quotas = Quotas(db, settings.project_limits(), settings.auth_cache_seconds)
    exports = ExportService(settings, ExportStore(db), images, layers, blobs, quotas)
    training = TrainingService(
        settings, detectors, AnnotationStore(db), images, jobs, layers, exports, blobs, quotas
    )
    return Services(
        settings=settings,
        db=db,
        images=images,
        jobs=jobs,
        ingestor=ingestor,
        remote_cogs=RemoteCogs(images, settings.remote_hosts(), limits),
        detectors=detectors,
        layers=layers,
        engine=engine,
        rendered_tiles=RenderedTileCache(settings.detection_cache_bytes // 8),
        exports=exports,
        training=training,
        projects=projects,
        keys=ApiKeyStore(db),
        quotas=quotas,
    )
