"""The blob store: where COGs (and later models and exports) live, addressed by key.

Local directory for now. Writes land under a temporary name and are renamed into place, so a
reader never sees a half-written blob.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path, PurePosixPath


class LocalBlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Local path of a key; refuses keys that would escape the store."""
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or ".." in parts:
            raise ValueError(f"invalid blob key {key!r}")
        return self.root.joinpath(*parts)

    def gdal_path(self, key: str) -> str:
        """What GDAL opens to read the blob (a /vsi path for remote stores)."""
        return str(self.path(key))

    def staging_path(self, key: str) -> Path:
        """A private temp path beside the final one (same filesystem, so the rename is atomic)."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")

    def commit(self, staging: Path, key: str) -> int:
        """Move a finished staging file into place; returns its size in bytes."""
        final = self.path(key)
        os.replace(staging, final)
        return final.stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        target = self.path(prefix)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink(missing_ok=True)
