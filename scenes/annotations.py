"""Annotations made from a synthetic scene's truth, as a user would draw them: a training area
with every object in it labelled, accuracy areas labelled the same way, testing areas bare.

Used by the experiment framework and by tests, so both train on what the API accepts.
"""

from __future__ import annotations

from collections.abc import Sequence

from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry


def annotations_from_truth(
    truth: dict,
    crs_wkt: str,
    *,
    training: Sequence[BaseGeometry],
    accuracy: Sequence[BaseGeometry] = (),
    testing: Sequence[BaseGeometry] = (),
    classes: Sequence[str] | None = None,
    image_id: str | None = None,
    as_boxes: bool = False,
) -> dict:
    """A WGS84 FeatureCollection: the areas (given in the image CRS) and, as labels, the truth
    objects of `classes` whose representative point lies in a training or accuracy area."""
    features = []
    extra = {"image_id": image_id} if image_id else {}

    def add(geometry: BaseGeometry, props: dict) -> None:
        wgs84 = transform_geom(crs_wkt, "EPSG:4326", mapping(geometry), precision=9)
        features.append({"type": "Feature", "geometry": wgs84, "properties": {**props, **extra}})

    for role, areas in (
        ("training_area", training),
        ("accuracy_area", accuracy),
        ("testing_area", testing),
    ):
        for area in areas:
            add(area, {"role": role})
    labelled = [*training, *accuracy]
    for feature in truth["features"]:
        cls = feature["properties"]["class"]
        if classes is not None and cls not in classes:
            continue
        local = shape(transform_geom("EPSG:4326", crs_wkt, feature["geometry"]))
        point = local.representative_point()
        if any(area.contains(point) for area in labelled):
            geometry = local.envelope if as_boxes else local
            props = {"class": cls, **({"shape": "box"} if as_boxes else {})}
            add(geometry, props)
    return {"type": "FeatureCollection", "features": features}


def label_count(collection: dict) -> int:
    return sum(1 for f in collection["features"] if "class" in f["properties"])
