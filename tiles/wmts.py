"""The service-level WMTS capabilities document: every layer of the server behind one URL.

Each layer links to a TileMatrixSet of its own holding only the zoom levels it has (as titiler's
per-image document does): GDAL reads at the deepest level a set defines, whatever the limits say.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2
import morecantile
from titiler.core.utils import tms_limits

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=False,  # XML: values are escaped explicitly with |e
)


@dataclass(frozen=True)
class WmtsLayer:
    identifier: str
    title: str
    abstract: str
    bounds: tuple[float, float, float, float]  # WGS84 lon/lat
    tms_id: str  # the morecantile grid the tiles are cut on
    zooms: tuple[int, int]  # the levels this layer has on that grid
    url_template: str  # the grid fixed; {TileMatrix}, {TileRow}, {TileCol} left to the client
    media_type: str = "image/png"


@lru_cache(maxsize=16)
def _grid(tms_id: str) -> morecantile.TileMatrixSet:
    return morecantile.tms.get(tms_id)


def _tile_matrix_set(layer: WmtsLayer) -> dict:
    grid = _grid(layer.tms_id)
    low, high = layer.zooms
    matrices = [m for m in grid.tileMatrices if low <= int(m.id) <= high]
    return {"id": layer.identifier, "crs": grid.crs.srs, "matrices": matrices}


def render_capabilities(
    layers: list[WmtsLayer], capabilities_url: str, title: str = "tiledetect"
) -> str:
    entries = [
        {
            "layer": layer,
            "limits": tms_limits(_grid(layer.tms_id), layer.bounds, zooms=layer.zooms),
            "tile_matrix_set": _tile_matrix_set(layer),
        }
        for layer in layers
    ]
    return _templates.get_template("wmts_service.xml").render(
        title=title, capabilities_url=capabilities_url, entries=entries
    )
