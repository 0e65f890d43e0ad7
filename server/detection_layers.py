"""Resolves (detector, version, image) to a ready-to-run detection layer, caching the loaded
ONNX sessions (slow to create) and the layers (cheap, but asked for on every tile)."""

from __future__ import annotations

import threading

from cachetools import LRUCache, TTLCache
from rasterio.crs import CRS

from catalog.detectors import DetectorCatalog
from catalog.errors import DetectorNotFoundError, ImageNotFoundError
from catalog.images import ImageCatalog
from catalog.models import DetectorVersionRecord
from catalog.projects import owner, visible
from inference.engine import Layer
from inference.reading import check_bands
from inference.session import Detector, load_detector
from inference.windows import WindowGrid

# As with image paths: a deleted detector or image stops serving within seconds everywhere.
_LAYER_TTL_SECONDS = 5.0


class DetectionLayers:
    def __init__(self, images: ImageCatalog, detectors: DetectorCatalog) -> None:
        self.images = images
        self.detectors = detectors
        self._sessions: LRUCache[str, Detector] = LRUCache(maxsize=8)
        # (detector, image, number) -> (layer, detector's project, image's project)
        self._layers: TTLCache[tuple, tuple[Layer, str, str]] = TTLCache(
            maxsize=1024, ttl=_LAYER_TTL_SECONDS
        )
        self._lock = threading.Lock()

    def detector(self, version: DetectorVersionRecord) -> Detector:
        with self._lock:
            loaded = self._sessions.get(version.id)
            if loaded is None:
                loaded = load_detector(self.detectors.onnx_path(version))
                self._sessions[version.id] = loaded
            return loaded

    def layer(
        self, detector_id: str, image_id: str, number: int | None = None, project: str | None = None
    ) -> Layer:
        """The layer of a detector version on an image; with `project`, both must be in it."""
        key = (detector_id, image_id, number)
        with self._lock:
            cached = self._layers.get(key)
        if cached is not None:
            layer, detector_project, image_project = cached
            if not visible(detector_project, project):
                raise DetectorNotFoundError(f"no detector with id {detector_id!r}")
            if not visible(image_project, project):
                raise ImageNotFoundError(f"no image with id {image_id!r}")
            return layer
        record = self.detectors.get(detector_id, project)
        version = self.detectors.version(detector_id, number)
        image = self.images.get(image_id, project)
        cog_path = self.images.cog_path(image_id)  # raises while the image is being ingested
        detector = self.detector(version)
        check_bands(detector.spec, image.meta)
        layer = Layer(
            version_id=version.id,
            image_id=image_id,
            cog_path=cog_path,
            crs=CRS.from_wkt(image.meta["crs_wkt"]),
            image_gsd=image.meta["gsd"],
            detector=detector,
            grid=WindowGrid.for_image(image.meta, detector.spec),
        )
        with self._lock:
            self._layers[key] = (layer, owner(record.project_id), owner(image.project_id))
        return layer

    def forget(self, version_ids: list[str]) -> None:
        with self._lock:
            for version_id in version_ids:
                self._sessions.pop(version_id, None)
            self._layers.clear()
