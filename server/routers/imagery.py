"""Imagery tiles: titiler's TilerFactory over rio-tiler, with the image id as the only input."""

from __future__ import annotations

from pathlib import Path

from rio_tiler.io import Reader
from titiler.core.factory import TilerFactory
from titiler.extensions.wmts import wmtsExtension

from server.dependencies import image_cog_path

IMAGE_PREFIX = "/api/images/{image_id}"


def _layer_identifier(cog_path: str) -> str:
    """Per-image WMTS layers are named by image id, never by the file path behind it."""
    return Path(cog_path).stem


def imagery_factory() -> TilerFactory:
    return TilerFactory(
        reader=Reader,
        path_dependency=image_cog_path,
        router_prefix=IMAGE_PREFIX,
        add_viewer=False,  # titiler's viewer loads its scripts from a CDN; static/ has ours
        extensions=[wmtsExtension(layer_identifier_provider=_layer_identifier)],
    )
