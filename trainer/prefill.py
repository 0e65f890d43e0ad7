"""Predictions become labels: a version's objects inside a new training area, as label features
the user corrects (delete the false ones, reshape, add the missed) instead of outlining every
object. Labelling a new area then costs corrections, not outlines."""

from __future__ import annotations

from rasterio.warp import transform_geom
from shapely.geometry import mapping

from inference.session import Detector
from trainer.annotations import LABEL, AnnotationError, Area
from trainer.data import ImageSource, pixel_size_for
from trainer.evaluate import predict_area

MAX_SIDE_PX = 4096  # at the detector's resolution: a training area, not a whole image


class AreaTooLargeError(AnnotationError):
    """The area is larger than a pre-fill computes at once."""


def prefill_labels(
    detector: Detector, source: ImageSource, area: Area, image_id: str, version: int
) -> dict:
    """The version's objects whose representative point lies in `area` (image CRS), as a WGS84
    FeatureCollection of labels: class, box shape where the detector returns boxes, the score,
    and `prefilled_from`, the version they came from (kept in the stored annotations, so a
    revision says which labels began as predictions; training reads them as any label)."""
    pixel = pixel_size_for(source.meta, detector.spec.resolution_m)
    left, bottom, right, top = area.geometry.bounds
    width, height = (right - left) / pixel, (top - bottom) / pixel
    if max(width, height) > MAX_SIDE_PX:
        raise AreaTooLargeError(
            f"the area is {width:.0f} x {height:.0f} px at the detector's resolution; pre-fill "
            f"takes at most {MAX_SIDE_PX} px a side: draw a smaller training area"
        )
    objects, _, _ = predict_area(detector, source, area)
    crs = source.meta["crs_wkt"]
    boxes = detector.spec.output_shape == "box"
    features = []
    for obj in sorted(objects, key=lambda o: -o.score):
        properties = {"role": LABEL, "class": obj.class_name, "image_id": image_id}
        if boxes:
            properties["shape"] = "box"
        properties |= {"score": round(obj.score, 4), "prefilled_from": version}
        geometry = transform_geom(crs, "EPSG:4326", mapping(obj.geometry), precision=9)
        features.append({"type": "Feature", "properties": properties, "geometry": geometry})
    return {"type": "FeatureCollection", "features": features}
