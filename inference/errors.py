"""Errors of detectors and detection; mapped to HTTP codes in server/errors.py."""

from tiles.errors import TileDetectError


class InvalidDetectorError(TileDetectError, ValueError):
    """The file is not a usable detector: not ONNX, metadata missing or inconsistent."""


class IncompatibleImageError(TileDetectError, ValueError):
    """The detector cannot run on this image (its bands do not fit)."""
