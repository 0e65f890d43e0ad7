"""Domain errors for raster input. HTTP status codes are assigned in server/errors.py, not here."""

import re

# A file path in a GDAL message: the server's own layout, not for the client.
_PATH = re.compile(r"'?/[^\s']+'?:?\s?")


def gdal_reason(exc: BaseException, path: object = None) -> str:
    """GDAL's own words, from the innermost error (rasterio's outer one says only 'Read
    failed'), without file paths."""
    while exc.__cause__ is not None and str(exc.__cause__).strip():
        exc = exc.__cause__
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if path is not None:
        for form in (f"'{path}' ", f"{path}: ", str(path)):
            line = line.replace(form, "")
    return _PATH.sub("", line).strip()[:300]


class TileDetectError(Exception):
    """Base class of every error tiledetect raises on purpose."""


class InvalidImageError(TileDetectError, ValueError):
    """The file cannot become a catalogue image; the message tells the user why."""


class NotARasterError(InvalidImageError):
    """GDAL cannot read the file as a raster at all."""


class UnsupportedFormatError(InvalidImageError):
    """A raster GDAL reads, but not a GeoTIFF."""


class NotGeoreferencedError(InvalidImageError):
    """No CRS or geotransform, so it cannot be placed on a map."""


class UnsupportedLayoutError(InvalidImageError):
    """Data type, band count or size that tiledetect does not handle."""


class CorruptImageError(InvalidImageError):
    """The header is readable but pixel data is missing or broken (e.g. a truncated upload)."""


class InvalidTileRequestError(TileDetectError, ValueError):
    """Tile or image-data parameters that cannot be served (too large, out of range, NaN)."""


class OutsideGridError(TileDetectError, LookupError):
    """Tile coordinates that the tile matrix set does not have at that zoom."""
