"""The long-lived objects behind the API and the CLI, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass

from catalog.annotations import AnnotationStore
from catalog.blobstore import LocalBlobStore
from catalog.db import Database
from catalog.detectors import DetectorCatalog
from catalog.exports import ExportStore
from catalog.images import ImageCatalog
from catalog.ingest import Ingestor
from catalog.jobs import JobStore
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
    detectors: DetectorCatalog
    layers: DetectionLayers
    engine: DetectionEngine
    rendered_tiles: RenderedTileCache
    exports: ExportService
    training: TrainingService

    def close(self) -> None:
        self.exports.close()
        self.engine.close()
        self.db.dispose()


def default_batch_size(settings: Settings) -> int:
    """Batching pays on a GPU; on CPU one window per call is as fast (bench/detection_tiles.py)."""
    if settings.detection_batch_size:
        return settings.detection_batch_size
    return 8 if available_providers()[0] == "CUDAExecutionProvider" else 1


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    blobs = LocalBlobStore(settings.blob_dir)
    images = ImageCatalog(db, blobs)
    jobs = JobStore(db)
    ingestor = Ingestor(
        images,
        jobs,
        SourceLimits(
            max_bands=settings.max_image_bands,
            max_pixels=settings.max_image_pixels,
            max_expansion=settings.max_image_expansion,
        ),
    )
    detectors = DetectorCatalog(db, blobs)
    engine = DetectionEngine(
        ProbabilityCache(settings.detection_cache_dir, settings.detection_cache_bytes),
        threads=settings.detection_threads,
        max_batch=default_batch_size(settings),
        max_wait_s=settings.detection_batch_wait_ms / 1000,
    )
    layers = DetectionLayers(images, detectors)
    exports = ExportService(settings, ExportStore(db), images, layers, blobs)
    training = TrainingService(
        settings, detectors, AnnotationStore(db), images, jobs, layers, exports, blobs
    )
    return Services(
        settings=settings,
        db=db,
        images=images,
        jobs=jobs,
        ingestor=ingestor,
        detectors=detectors,
        layers=layers,
        engine=engine,
        rendered_tiles=RenderedTileCache(settings.detection_cache_bytes // 8),
        exports=exports,
        training=training,
    )
