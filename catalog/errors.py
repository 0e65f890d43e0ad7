"""Catalogue errors; server/errors.py maps them to HTTP codes."""

import errno
import os
from pathlib import Path

from tiles.errors import TileDetectError


class NotFoundError(TileDetectError, LookupError):
    """No record with that id (or not visible to the caller)."""


class ImageNotFoundError(NotFoundError):
    pass


class JobNotFoundError(NotFoundError):
    pass


class ImageNotReadyError(TileDetectError):
    """The image exists but its COG is not complete yet."""


class ConflictError(TileDetectError):
    """The request contradicts the record's current state (e.g. deleting during ingest)."""


class DetectorNotFoundError(NotFoundError):
    """No detector (or detector version) with that id."""


class ExportNotFoundError(NotFoundError):
    """No export with that id."""


class AuthenticationError(TileDetectError):
    """A request without a valid API key (missing, unknown or revoked)."""


class RemoteCogRefusedError(TileDetectError):
    """A remote COG URL this server may not read: the feature is off, the host is not on the
    allow-list, or the URL redirects."""


class InvalidNameError(TileDetectError, ValueError):
    """A display name that cannot be stored or shown (empty, too long, control characters)."""


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the exception's chain, or in the text of a GDAL/pyogrio error (they
    report it as a message, not an errno)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if "no space left" in text or "disk full" in text or "free disk space" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# GDAL's GTiff writer reports ENOSPC only as "Write failed" (libtiff prints the cause to stderr),
# so a failed write where this little room is left is taken as a full disk.
_NEARLY_FULL_BYTES = 16 * 1024**2


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space for unprivileged writers on the filesystem of `path` (or its nearest parent)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def failure_reason(exc: BaseException, written: str | os.PathLike | None = None) -> str:
    """A job's failure in words: disk full is named as such, the rest keeps its own message.
    `written`: where the failed work was writing, to tell a full disk behind a vague error."""
    free = free_bytes(written) if written is not None else None
    if is_disk_full(exc) or (free is not None and free < _NEARLY_FULL_BYTES):
        where = f" ({free} bytes left where it was writing)" if free is not None else ""
        return f"the disk is full (no space left on device){where}: {exc}"
    return str(exc) or type(exc).__name__
