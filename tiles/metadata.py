"""Describes a COG for the catalogue: georeference, resolution, layout and band statistics."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import morecantile
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.warp import transform
from rio_tiler.io import Reader

WGS84 = CRS.from_epsg(4326)
WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
# Grids whose zoom range is recorded at ingest: those the service-level WMTS offers GIS clients.
DESCRIBED_TMS = ("WebMercatorQuad", "WGS1984Quad")
# Band statistics come from an overview of at most this many pixels per side: fast on huge images.
STATS_MAX_SIZE = 1024


@dataclass(frozen=True)
class ImageMetadata:
    width: int
    height: int
    count: int
    dtype: str
    crs: str  # "EPSG:xxxx" where one exists, WKT otherwise
    crs_wkt: str
    bounds: tuple[float, float, float, float]  # in the image's own CRS
    bounds_wgs84: tuple[float, float, float, float]
    gsd: float  # ground sample distance, metres per pixel
    resolution: tuple[float, float]  # pixel size in CRS units (x, y)
    nodata: float | None
    mask: str  # "none" | "nodata" | "alpha" | "mask"
    band_names: list[str]
    statistics: dict[str, dict[str, float]]
    minzoom: int  # WebMercatorQuad
    maxzoom: int
    zooms: dict[str, tuple[int, int]]  # per TileMatrixSet id in DESCRIBED_TMS
    overviews: list[int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_cog(path: str | Path) -> ImageMetadata:
    """Read the catalogue description of a COG, with per-band statistics from an overview."""
    with Reader(str(path), tms=WEB_MERCATOR) as reader:
        dataset = reader.dataset
        info = reader.info()
        stats = reader.statistics(max_size=STATS_MAX_SIZE)
        bounds_wgs84 = reader.get_geographic_bounds(WGS84)
        crs = dataset.crs
        epsg = crs.to_epsg()
        return ImageMetadata(
            width=dataset.width,
            height=dataset.height,
            count=dataset.count,
            dtype=dataset.dtypes[0],
            crs=f"EPSG:{epsg}" if epsg else crs.to_wkt(),
            crs_wkt=crs.to_wkt(),
            bounds=tuple(dataset.bounds),
            bounds_wgs84=tuple(bounds_wgs84),
            gsd=ground_sample_distance(crs, dataset.res, dataset.bounds),
            resolution=tuple(dataset.res),
            nodata=_finite_or_none(dataset.nodata),
            mask=_mask_kind(info.nodata_type),
            band_names=[name for name, _ in info.band_descriptions],
            statistics={band: _band_stats(s.model_dump()) for band, s in stats.items()},
            minzoom=reader.minzoom,
            maxzoom=reader.maxzoom,
            zooms=zoom_ranges(path),
            overviews=list(dataset.overviews(1)),
        )


def zoom_ranges(path: str | Path) -> dict[str, tuple[int, int]]:
    """The zooms each grid needs, from the coarsest overview to the native resolution."""
    zooms = {}
    for tms_id in DESCRIBED_TMS:
        with Reader(str(path), tms=morecantile.tms.get(tms_id)) as reader:
            zooms[tms_id] = (reader.minzoom, reader.maxzoom)
    return zooms


def ground_sample_distance(
    crs: CRS, res: tuple[float, float], bounds: tuple[float, float, float, float]
) -> float:
    """Pixel size in metres on the ground, at the image centre.

    A projected CRS's nominal resolution is what its producer declared (UTM's 0.04% scale error
    is ignored); degrees and Web Mercator's stretched metres are measured geodesically instead.
    """
    if crs.is_projected and crs.to_dict().get("proj") != "merc":
        factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        return float(math.sqrt(res[0] * res[1]) * factor)
    x = (bounds[0] + bounds[2]) / 2
    y = (bounds[1] + bounds[3]) / 2
    lons, lats = transform(crs, "EPSG:4326", [x, x + res[0], x], [y, y, y - res[1]])
    geod = Geod(ellps="WGS84")
    _, _, across = geod.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, down = geod.inv(lons[0], lats[0], lons[2], lats[2])
    return float(math.sqrt(across * down))


def _mask_kind(nodata_type: str) -> str:
    return {"None": "none", "Nodata": "nodata", "Alpha": "alpha", "Mask": "mask"}.get(
        nodata_type, nodata_type.lower()
    )


def _band_stats(stats: dict[str, Any]) -> dict[str, float]:
    keys = ("min", "max", "mean", "std", "median", "percentile_2", "percentile_98", "valid_percent")
    return {key: _finite_or_none(stats.get(key)) for key in keys}


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
