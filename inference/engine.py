"""Detection on demand: probabilities of any area of an image, from cached inference windows.

A `Layer` is one (detector version, image). The engine computes each window at most once: it
looks in the cache, joins a computation already in flight for the same window (single flight),
or reads the window through rio-tiler and runs the model (batched with other requests when the
execution provider gains from it). Reading and inference run in a thread pool, never on the event
loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from inference.batching import InferenceBatcher
from inference.cache import ProbabilityCache, WindowKey
from inference.format import DetectorSpec
from inference.reading import read_region
from inference.session import Detector
from inference.windows import Bounds, WindowGrid, WindowIndex


@dataclass(frozen=True)
class Layer:
    version_id: str
    image_id: str
    cog_path: str
    crs: CRS
    image_gsd: float
    detector: Detector = field(hash=False, compare=False)
    grid: WindowGrid = field(hash=False, compare=False)

    @property
    def spec(self) -> DetectorSpec:
        return self.detector.spec

    def with_threshold(self, threshold: float) -> Layer:
        """The same layer (same session, same cached probabilities) shown at another score
        threshold: a map viewer's slider."""
        spec = dataclasses.replace(self.detector.spec, score_threshold=threshold)
        return dataclasses.replace(self, detector=dataclasses.replace(self.detector, spec=spec))


@dataclass
class Mosaic:
    """Probabilities (classes incl. background, H, W) on the native grid, in the image CRS."""

    probabilities: np.ndarray
    transform: Affine
    crs: CRS
    windows: int


class DetectionEngine:
    def __init__(
        self,
        cache: ProbabilityCache,
        threads: int = 4,
        max_batch: int = 1,
        max_wait_s: float = 0.004,
    ) -> None:
        self.cache = cache
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="detect")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._batchers: dict[str, InferenceBatcher] = {}
        self._in_flight: dict[WindowKey, asyncio.Future] = {}
        self.windows_computed = 0

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def batcher(self, layer: Layer) -> InferenceBatcher:
        batcher = self._batchers.get(layer.version_id)
        if batcher is None:
            batcher = InferenceBatcher(
                layer.detector, self.executor, self.max_batch, self.max_wait_s
            )
            self._batchers[layer.version_id] = batcher
        return batcher

    async def window(self, layer: Layer, index: WindowIndex) -> np.ndarray:
        """The core probabilities (classes, core, core) of one window, float16."""
        key = WindowKey(layer.version_id, layer.image_id, index.col, index.row)
        cached = self.cache.get_from_memory(key)
        if cached is not None:
            return cached
        running = self._in_flight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await self._compute(layer, index, key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: joiners get it, nobody is warned about it
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._in_flight[key]

    async def _compute(self, layer: Layer, index: WindowIndex, key: WindowKey) -> np.ndarray:
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(self.executor, self.cache.get_from_disk, key)
        if stored is not None:
            return stored
        spec = layer.spec
        size = (spec.tile_size, spec.tile_size)
        pixels = await loop.run_in_executor(
            self.executor,
            read_region,
            layer.cog_path,
            layer.crs,
            layer.grid.read_bounds(index),
            size,
            spec,
            layer.image_gsd,
        )
        probabilities = await self.batcher(layer).infer(pixels)
        margin, core = spec.overlap_px, spec.core_size
        kept = probabilities[:, margin : margin + core, margin : margin + core]
        self.windows_computed += 1
        return await loop.run_in_executor(self.executor, self.cache.put, key, kept)

    async def mosaic(self, layer: Layer, bounds: Bounds) -> Mosaic | None:
        """Probabilities covering `bounds` (image CRS), or None where it misses the image."""
        windows = layer.grid.windows_for(bounds)
        if not windows:
            return None
        results = await asyncio.gather(*(self.window(layer, index) for index in windows))
        transform, width, height = layer.grid.mosaic_transform(windows)
        classes = results[0].shape[0]
        mosaic = np.empty((classes, height, width), np.float32)
        first_col = min(w.col for w in windows)
        first_row = min(w.row for w in windows)
        core = layer.grid.core
        for index, probabilities in zip(windows, results, strict=True):
            top = (index.row - first_row) * core
            left = (index.col - first_col) * core
            mosaic[:, top : top + core, left : left + core] = probabilities
        return Mosaic(mosaic, transform, layer.crs, len(windows))
