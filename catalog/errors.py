"""Catalogue errors; server/errors.py maps them to HTTP codes."""

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
