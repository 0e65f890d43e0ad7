"""Scoring a detector on accuracy areas, the way Picterra and the detection field report it:

- object precision / recall / F1: a prediction matches a label at IoU >= 0.5, one to one (box
  labels are compared with the prediction's bounding box; point labels with the prediction that
  contains them); the same at IoU >= 0.4 beside it (`object_iou40`), as tree-crown benchmarks
  (NeonTreeEvaluation, DeepForest) report;
- counting F-score: per area, predicted vs labelled count (2 * min / (predicted + labelled)),
  averaged over the areas;
- foreground IoU and pixel F1 over the areas' pixels, of the objects found (grown back from
  their cores for detectors trained on cores), as the user gets them.

Predictions come from the served post-processing (`inference.objects`) on probabilities computed
on the window lattice (`inference.region`), so scores describe what the map will show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
import shapely.prepared
from rasterio.features import rasterize
from shapely.geometry import box

from inference.metrics import MatchScores, matched_pairs
from inference.objects import DetectedObject, extract_objects
from inference.region import infer_region, snapped_request
from inference.session import Detector
from trainer.annotations import Area, Label
from trainer.data import ImageSource, pixel_size_for

MIN_IOU = 0.5
LOOSE_IOU = 0.4  # tree-crown benchmarks' threshold, reported beside


@dataclass
class AreaResult:
    """Predictions and labels of one area, with each one's verdict (for display and scores)."""

    area: Area
    objects: list[DetectedObject]
    labels: list[Label]
    matched: list[tuple[int, int]]  # (object index, label index) at IoU >= MIN_IOU
    foreground: tuple[int, int, int] = (0, 0, 0)  # true positive, false positive, false negative px
    matched_loose: list[tuple[int, int]] = field(default_factory=list)  # at IoU >= LOOSE_IOU
    image_id: str | None = None  # where the area is, for the per-area table's link to the map
    bounds_wgs84: tuple[float, float, float, float] | None = None

    def as_dict(self) -> dict:
        """This area's own scores: users fix the worst areas first."""
        scores = _match_scores([self], None)
        return {
            "image_id": self.image_id,
            "area": self.area.index,
            "id": self.area.feature_id,
            "bounds_wgs84": self.bounds_wgs84,
            "labelled": len(self.labels),
            "predicted": len(self.objects),
            **scores.as_dict(),
            "f1_iou40": round(_match_scores([self], None, loose=True).f1, 4),
        }


@dataclass
class Scores:
    results: list[AreaResult] = field(default_factory=list)

    def as_dict(self, class_names: Sequence[str]) -> dict:
        overall = _match_scores(self.results, None)
        per_class = {name: _match_scores(self.results, name).as_dict() for name in class_names}
        loose = _match_scores(self.results, None, loose=True)
        per_class_loose = {
            name: _match_scores(self.results, name, loose=True).as_dict() for name in class_names
        }
        counts = [
            {"area": r.area.index, "predicted": len(r.objects), "labelled": len(r.labels)}
            for r in self.results
        ]
        counting = [
            2 * min(c["predicted"], c["labelled"]) / (c["predicted"] + c["labelled"])
            if c["predicted"] + c["labelled"]
            else 1.0
            for c in counts
        ]
        tp, fp, fn = (sum(r.foreground[i] for r in self.results) for i in range(3))
        return {
            "areas": len(self.results),
            "labels": sum(len(r.labels) for r in self.results),
            "object": overall.as_dict(),
            "per_class": per_class,
            "object_iou40": loose.as_dict(),
            "per_class_iou40": per_class_loose,
            "counting_f1": round(float(np.mean(counting)), 4) if counting else None,
            "counts": counts,
            "per_area": [r.as_dict() for r in self.results],
            "foreground_iou": round(tp / (tp + fp + fn), 4) if tp + fp + fn else None,
            "pixel_f1": round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else None,
        }

    def features(self) -> list[tuple[str, object, dict]]:
        """(verdict, geometry in image CRS, properties): true/false positives and misses."""
        out = []
        for result in self.results:
            hit_objects = {o for o, _ in result.matched}
            hit_labels = {t for _, t in result.matched}
            for index, obj in enumerate(result.objects):
                verdict = "true_positive" if index in hit_objects else "false_positive"
                props = {"class": obj.class_name, "score": round(obj.score, 4)}
                out.append((verdict, obj.geometry, props))
            for index, label in enumerate(result.labels):
                if index not in hit_labels:
                    out.append(("missed", label.geometry, {"class": label.cls}))
        return out


def predict_area(
    detector: Detector, source: ImageSource, area: Area
) -> tuple[list[DetectedObject], np.ndarray, object]:
    """Objects whose representative point lies in the area, plus the probabilities and their
    transform (for pixel scores)."""
    spec = detector.spec
    pixel = pixel_size_for(source.meta, spec.resolution_m)
    request = snapped_request(source.cog_path, source.meta, area.geometry.bounds, pixel)
    probabilities, transform, _ = infer_region(request, detector)
    metres_per_unit = source.meta["gsd"] / source.meta["resolution"][0]
    prepared = shapely.prepared.prep(area.geometry)

    def keep(polygon) -> bool:
        return prepared.contains(polygon.representative_point())

    objects = extract_objects(
        probabilities, transform, spec, keep=keep, metres_per_unit=metres_per_unit
    )
    return objects, probabilities, transform


def score_areas(
    detector: Detector,
    source: ImageSource,
    areas: Sequence[Area],
    labels_in: dict[int, list[Label]],
) -> Scores:
    """Predict every accuracy area of one image and score it against its labels."""
    scores = Scores()
    spec = detector.spec
    for area in areas:
        objects, probabilities, transform = predict_area(detector, source, area)
        labels = labels_in[area.index]
        matched, loose = [], []
        for name in spec.class_names:
            mine = [i for i, o in enumerate(objects) if o.class_name == name]
            theirs = [i for i, lab in enumerate(labels) if lab.cls == name]
            predicted = [_as_label_kind(objects[i].geometry, labels, theirs) for i in mine]
            truth = [labels[j].geometry for j in theirs]
            for p, t in matched_pairs(predicted, truth, MIN_IOU):
                matched.append((mine[p], theirs[t]))
            for p, t in matched_pairs(predicted, truth, LOOSE_IOU):
                loose.append((mine[p], theirs[t]))
        foreground = _foreground(objects, probabilities.shape[1:], transform, area, labels)
        scores.results.append(AreaResult(area, objects, labels, matched, foreground, loose))
    return scores


def _as_label_kind(geometry, labels: Sequence[Label], theirs: Sequence[int]):
    """Where this class's labels are boxes, a prediction is compared as its bounding box."""
    if theirs and all(labels[j].kind == "box" for j in theirs):
        return box(*geometry.bounds)
    return geometry


def _foreground(objects, shape, transform, area: Area, labels: Sequence[Label]):
    """Pixel counts of the objects (what the user gets: grown back from their cores where the
    detector was trained on cores) against the labels, inside the area."""
    shapes = [(obj.geometry, 1) for obj in objects]
    predicted = (
        rasterize(shapes, out_shape=shape, transform=transform) > 0
        if shapes
        else np.zeros(shape, bool)
    )
    inside = rasterize([(area.geometry, 1)], out_shape=shape, transform=transform) > 0
    polygons = [(lab.geometry, 1) for lab in labels if lab.geometry.geom_type != "Point"]
    truth = (
        rasterize(polygons, out_shape=shape, transform=transform) > 0
        if polygons
        else np.zeros(shape, bool)
    )
    tp = int(np.count_nonzero(predicted & truth & inside))
    fp = int(np.count_nonzero(predicted & ~truth & inside))
    fn = int(np.count_nonzero(~predicted & truth & inside))
    return tp, fp, fn


def _match_scores(
    results: Sequence[AreaResult], class_name: str | None, loose: bool = False
) -> MatchScores:
    tp = fp = fn = 0
    for r in results:
        objects = [i for i, o in enumerate(r.objects) if class_name in (None, o.class_name)]
        labels = [i for i, lab in enumerate(r.labels) if class_name in (None, lab.cls)]
        matched = r.matched_loose if loose else r.matched
        hits = sum(1 for o, _ in matched if o in objects)
        tp += hits
        fp += len(objects) - hits
        fn += len(labels) - hits
    return MatchScores(tp, fp, fn)
