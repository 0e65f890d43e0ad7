"""The service-level WMTS capabilities document: every layer of the server behind one URL."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import morecantile
from titiler.core.utils import tms_limits


from tiles.metadata import DESCRIBED_TMS as SERVICE_TMS

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=False,  # XML: values are escaped explicitly with |e
)


@dataclass
class WmtsLayer:
    identifier: str
    title: str
    abstract: str
    bounds: tuple[float, float, float, float]  # WGS84 lon/lat
    zooms: dict[str, tuple[int, int]]  # per TileMatrixSet id
    url_template: str  # with {TileMatrixSet}, {TileMatrix}, {TileRow}, {TileCol}
    media_type: str = "image/png"
    links: list[dict] = field(default_factory=list)


def render_capabilities(
    layers: list[WmtsLayer], capabilities_url: str, title: str = "tiledetect"
) -> str:
    tms_ids = sorted({tms_id for layer in layers for tms_id in layer.zooms}) or list(SERVICE_TMS)
    grids = {tms_id: morecantile.tms.get(tms_id) for tms_id in tms_ids}
    for layer in layers:
        layer.links = [
            {
                "tms_id": tms_id,
                "limits": tms_limits(grids[tms_id], layer.bounds, zooms=zooms),
            }
            for tms_id, zooms in layer.zooms.items()
        ]
    tile_matrix_sets = [
        {"id": tms_id, "crs": grid.crs.srs, "matrices": grid.tileMatrices}
        for tms_id, grid in grids.items()
    ]
    return _templates.get_template("wmts_service.xml").render(
        title=title,
        capabilities_url=capabilities_url,
        layers=layers,
        tile_matrix_sets=tile_matrix_sets,
    )
