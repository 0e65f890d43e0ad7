"""Imagery tiles: titiler's TilerFactory over rio-tiler, with the image id as the only input."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path as FilePath
from typing import Annotated

import morecantile
from fastapi import Depends, Path
from morecantile.errors import InvalidZoomError
from rio_tiler.io import Reader
from titiler.core.factory import TilerFactory
from titiler.extensions.wmts import wmtsExtension

from server.dependencies import image_cog_path

IMAGE_PREFIX = "/api/images/{image_id}"
# Any concrete path matching the tile routes selects them for the zoom check.
_TILE_ROUTES = [
    {"path": "/tiles/WebMercatorQuad/0/0/0", "method": "GET"},
    {"path": "/tiles/WebMercatorQuad/0/0/0.png", "method": "GET"},
]


def _layer_identifier(cog_path: str) -> str:
    """Per-image WMTS layers are named by image id, never by the file path behind it."""
    return FilePath(cog_path).stem


@lru_cache(maxsize=64)
def _zoom_range(tms_id: str) -> tuple[int, int] | None:
    # morecantile's registry deep-copies a grid on every get(): look each one up once.
    if tms_id not in morecantile.tms.list():
        return None
    grid = morecantile.tms.get(tms_id)
    return grid.minzoom, grid.maxzoom


async def zoom_in_grid(
    tileMatrixSetId: Annotated[str, Path()],  # noqa: N803 - titiler's path parameter name
    z: Annotated[int, Path()],
) -> None:
    """A zoom level the grid does not have gets a message naming the levels it does have."""
    zooms = _zoom_range(tileMatrixSetId)
    if zooms is None:
        return  # titiler's own validation names the grids it knows
    if not zooms[0] <= z <= zooms[1]:
        raise InvalidZoomError(
            f"zoom {z} is out of range: {tileMatrixSetId} has zoom levels {zooms[0]} to {zooms[1]}"
        )


def imagery_factory() -> TilerFactory:
    return TilerFactory(
        reader=Reader,
        path_dependency=image_cog_path,
        router_prefix=IMAGE_PREFIX,
        add_viewer=False,  # titiler's viewer loads its scripts from a CDN; static/ has ours
        extensions=[wmtsExtension(layer_identifier_provider=_layer_identifier)],
        route_dependencies=[(_TILE_ROUTES, [Depends(zoom_in_grid)])],
    )
