"""Probability cache of inference windows: memory (bounded in bytes) in front of disk.

Keys carry the detector version, so a new version never sees an old version's results; the disk
layer lives under the data directory, so a restart keeps what was computed.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cachetools import LRUCache


@dataclass(frozen=True)
class WindowKey:
    version_id: str
    image_id: str
    col: int
    row: int

    def relative_path(self) -> Path:
        return Path(self.version_id) / self.image_id / f"{self.row}_{self.col}.npy"


class ProbabilityCache:
    """Thread-safe. Stores float16: probabilities need no more, and it halves memory and disk."""

    def __init__(self, directory: Path | None, max_bytes: int) -> None:
        self.directory = directory
        self._memory: LRUCache[WindowKey, np.ndarray] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda array: array.nbytes
        )
        self._lock = threading.Lock()
        self.hits = {"memory": 0, "disk": 0}
        self.misses = 0

    def get(self, key: WindowKey) -> np.ndarray | None:
        """Memory, then disk (blocking: call it off the event loop when not in memory)."""
        return self.get_from_memory(key) if key in self else self.get_from_disk(key)

    def __contains__(self, key: WindowKey) -> bool:
        with self._lock:
            return key in self._memory

    def get_from_memory(self, key: WindowKey) -> np.ndarray | None:
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self.hits["memory"] += 1
            return found

    def get_from_disk(self, key: WindowKey) -> np.ndarray | None:
        found = self._load(key)
        with self._lock:
            if found is None:
                self.misses += 1
                return None
            self.hits["disk"] += 1
            self._remember(key, found)
        return found

    def put(self, key: WindowKey, probabilities: np.ndarray) -> np.ndarray:
        stored = probabilities.astype(np.float16)
        with self._lock:
            self._remember(key, stored)
        self._save(key, stored)
        return stored

    def forget_version(self, version_id: str) -> None:
        """Drop a deleted version's results from memory (its disk files go with its directory)."""
        with self._lock:
            for key in [k for k in self._memory if k.version_id == version_id]:
                del self._memory[key]

    def _remember(self, key: WindowKey, array: np.ndarray) -> None:
        if array.nbytes <= self._memory.maxsize:
            self._memory[key] = array

    def _load(self, key: WindowKey) -> np.ndarray | None:
        if self.directory is None:
            return None
        try:
            return np.load(self.directory / key.relative_path())
        except (FileNotFoundError, ValueError, OSError):
            return None  # absent, or a torn write from a crash: recompute

    def _save(self, key: WindowKey, array: np.ndarray) -> None:
        if self.directory is None:
            return
        path = self.directory / key.relative_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(staging, "wb") as handle:
            np.save(handle, array)
        os.replace(staging, path)


class RenderedTileCache:
    """Finished tile bodies (PNG, MVT, GeoJSON) by layer version and tile: a warm viewport
    answers without touching probabilities at all. Bounded in bytes; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self._tiles: LRUCache[tuple, tuple[bytes, dict[str, str]]] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda item: len(item[0]) + 256
        )
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bytes, dict[str, str]] | None:
        with self._lock:
            return self._tiles.get(key)

    def put(self, key: tuple, body: bytes, headers: dict[str, str]) -> None:
        with self._lock:
            if len(body) + 256 <= self._tiles.maxsize:
                self._tiles[key] = (body, dict(headers))
