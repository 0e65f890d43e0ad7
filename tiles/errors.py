"""Domain errors for raster input. HTTP status codes are assigned in server/errors.py, not here."""


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
