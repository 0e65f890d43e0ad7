"""A detector's training annotations: a WGS84 GeoJSON FeatureCollection, checked, in image CRS.

Training needs to know, for every pixel of a training area, whether a label covers it. What cannot
be understood (broken geometry, an unknown class, another image) is refused; the input comes from
users (and from anyone who can reach the API), so it is read field by field without trusting its
shape, and whatever is wrong becomes an `AnnotationError` that names the first bad feature in
collection order, and nothing is half-parsed. What a person would expect to work is accepted with
an `AnnotationWarning` naming the feature and what will be done with it: a label straddling a
training area's edge trains with the part inside, a label in no area is kept but unused.
Geometries are checked in WGS84, where the user drew them, and only then moved to the image's
CRS, where training reads.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import MultiPolygon, Point, Polygon, box
from shapely.geometry.base import BaseGeometry

from tiles.errors import TileDetectError

MAX_FEATURES = 10_000
MAX_VERTICES = 100_000  # total over the collection

TRAINING, TESTING, ACCURACY, LABEL = "training_area", "testing_area", "accuracy_area", "label"
ROLES = (TRAINING, TESTING, ACCURACY, LABEL)
# Projection moves a vertex that lies on a neighbour's edge off it by far less than this share of
# the smaller area; a real overlap between a training and an accuracy area is far larger.
OVERLAP_TOLERANCE = 1e-6
MAX_AREA_PAIRS = 100_000  # nearby training/accuracy pairs compared for overlap
_QUOTE_MAX = 60


class AnnotationError(TileDetectError, ValueError):
    """Says which feature is wrong and why, e.g. 'feature 3 (id "b7"): label class "truck" is
    not one of the detector's classes: tree, car'."""

    def __init__(self, message: str, feature_index: int | None = None) -> None:
        super().__init__(message)
        self.feature_index = feature_index


@dataclass(frozen=True)
class Area:
    role: str  # training_area | testing_area | accuracy_area
    geometry: Polygon | MultiPolygon  # image CRS, clipped to the image
    index: int  # feature index in the collection
    feature_id: str | None


@dataclass(frozen=True)
class Label:
    cls: str
    geometry: BaseGeometry  # image CRS: Polygon (polygon or box) or Point
    kind: str  # polygon | box | point
    index: int
    feature_id: str | None


@dataclass(frozen=True)
class AnnotationWarning:
    """Something accepted that may not do what the user meant, e.g. 'feature 5: label extends
    past the edge of training_area feature 0: the part outside is not used for training'."""

    index: int  # feature index in the collection
    feature_id: str | None
    problem: str  # straddles_area | outside_areas | in_testing_area
    message: str

    def as_dict(self) -> dict:
        return {
            "feature": self.index,
            "id": self.feature_id,
            "problem": self.problem,
            "message": self.message,
        }


@dataclass(frozen=True)
class Annotations:
    training: tuple[Area, ...]
    testing: tuple[Area, ...]
    accuracy: tuple[Area, ...]
    labels: tuple[Label, ...]
    warnings: tuple[AnnotationWarning, ...] = ()

    def labels_in(self, area: Area) -> list[Label]:
        """The labels an area uses.

        An accuracy (or testing) area owns the labels whose representative point lies in it, as
        it owns the predicted objects it scores. A training area also takes the labels that only
        straddle its edge (the part outside is IGNORE in the target, so what is inside still
        teaches "object" rather than background), unless an accuracy area owns them: an
        accuracy label never trains."""
        if not self.labels:
            return []
        anchors = _anchors(self.labels)
        if area.role != TRAINING:
            inside = shapely.covers(area.geometry, anchors)
            return [label for label, hit in zip(self.labels, inside, strict=True) if hit]
        scored = _covered(anchors, [a.geometry for a in self.accuracy])
        touched = _overlapping(self.labels, area.geometry) | shapely.covers(area.geometry, anchors)
        return [
            label for label, hit, own in zip(self.labels, touched, scored, strict=True)
            if hit and not own
        ]  # fmt: skip

    def trained_indices(self) -> set[int]:
        """Feature indices of the labels some training area trains on."""
        return {label.index for area in self.training for label in self.labels_in(area)}

    def used_labels(self) -> int:
        """Labels some training area trains on."""
        return len(self.trained_indices())

    def counts(self) -> dict[str, int]:
        """Labels per class, classes in alphabetical order."""
        return dict(sorted(Counter(label.cls for label in self.labels).items()))

    def as_geojson(self, image_crs_wkt: str) -> dict:
        """Back to a WGS84 FeatureCollection that `parse_annotations` reads to the same
        annotations (areas as clipped to the image)."""
        to_wgs84 = _transformer(image_crs_wkt, "EPSG:4326")
        items = (*self.training, *self.testing, *self.accuracy, *self.labels)
        in_order = sorted(items, key=lambda item: item.index)
        return {"type": "FeatureCollection", "features": [_feature(i, to_wgs84) for i in in_order]}


@dataclass(frozen=True)
class _Raw:
    """One feature read but not yet related to the others."""

    index: int
    feature_id: str | None
    role: str
    cls: str | None
    kind: str | None
    geometry: BaseGeometry  # image CRS; areas clipped to the image


def parse_annotations(
    collection: Any,
    *,
    classes: Sequence[str],
    image_crs_wkt: str,
    image_bounds: tuple[float, float, float, float],
    image_id: str | None = None,
    require_labels: bool = True,
) -> Annotations:
    """Checks a parsed GeoJSON FeatureCollection against a detector's classes and an image.

    `image_id`, when given, refuses features that name another image (features that name none
    are accepted, as the CLI's single-image files do). `require_labels=False` accepts a collection
    without training areas or labels, e.g. testing areas alone. Features are checked one by one
    in collection order, then against one another (training area present, no training/accuracy
    overlap, labels present and some in a training area); labels not used whole come back as
    `Annotations.warnings`."""
    features = _features_of(collection)
    to_image = _transformer("EPSG:4326", image_crs_wkt)
    image_box = box(*image_bounds)
    budget = _VertexBudget()
    raws = [
        _read_feature(index, feature, classes, image_id, budget, to_image, image_box)
        for index, feature in enumerate(features)
    ]
    areas = {role: [r for r in raws if r.role == role] for role in (TRAINING, TESTING, ACCURACY)}
    labels = [r for r in raws if r.role == LABEL]
    if require_labels and not areas[TRAINING]:
        raise AnnotationError(
            "the collection has no training_area: draw at least one polygon with "
            'properties.role "training_area" around exhaustively labelled ground'
        )
    _check_no_overlap(areas[TRAINING], areas[ACCURACY])
    if require_labels and not labels:
        raise AnnotationError("the collection has no labels: a detector cannot learn from none")
    annotations = Annotations(
        training=tuple(_area(r) for r in areas[TRAINING]),
        testing=tuple(_area(r) for r in areas[TESTING]),
        accuracy=tuple(_area(r) for r in areas[ACCURACY]),
        labels=tuple(Label(r.cls, r.geometry, r.kind, r.index, r.feature_id) for r in labels),
    )
    warnings = label_warnings(annotations)
    if require_labels and not annotations.used_labels():
        raise AnnotationError(
            "no label lies in a training_area: draw a training area round the labelled objects"
        )
    return dataclasses.replace(annotations, warnings=warnings)


# --- one feature ---------------------------------------------------------------------------------


class _VertexBudget:
    """Counts positions over the whole collection before any of them is looked at."""

    def __init__(self) -> None:
        self.used = 0

    def spend(self, count: int, where: str, index: int) -> None:
        self.used += count
        if self.used > MAX_VERTICES:
            raise AnnotationError(
                f"{where}the collection has more than {MAX_VERTICES} vertices in all; "
                "split it or simplify the geometries",
                index,
            )


def _features_of(collection: Any) -> list:
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        raise AnnotationError(
            'annotations must be a GeoJSON object with "type": "FeatureCollection"'
        )
    features = collection.get("features")
    if not isinstance(features, list):
        raise AnnotationError('a FeatureCollection needs a "features" list')
    if len(features) > MAX_FEATURES:
        raise AnnotationError(
            f"the collection has {len(features)} features; at most {MAX_FEATURES}"
        )
    return features


def _read_feature(
    index: int,
    feature: Any,
    classes: Sequence[str],
    image_id: str | None,
    budget: _VertexBudget,
    to_image: Transformer,
    image_box: Polygon,
) -> _Raw:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise AnnotationError(
            f'feature {index}: not a GeoJSON Feature (an object with "type": "Feature")', index
        )
    feature_id = _feature_id(feature.get("id"), index)
    where = _prefix(index, feature_id)

    def fail(reason: str) -> AnnotationError:
        return AnnotationError(where + reason, index)

    properties = feature.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise fail("properties must be an object or null")
    _check_image(properties.get("image_id"), image_id, fail)
    role = _role(properties.get("role"), fail)
    cls = _label_class(properties, classes, fail) if role == LABEL else None
    wgs84, coordinates = _geometry(feature.get("geometry"), role, budget, where, index, fail)
    kind = _label_kind(wgs84, coordinates, properties.get("shape"), fail) if role == LABEL else None
    local = _project(wgs84, to_image, fail)
    if role != LABEL:
        local = _clip_to_image(local, image_box, fail)
    elif not image_box.intersects(local):
        raise fail("the label lies outside the image")
    return _Raw(index, feature_id, role, cls, kind, local)


def _feature_id(value: Any, index: int) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= 1e30:
        return json.dumps(value)
    raise AnnotationError(f"feature {index}: id must be a string or a (modest) number", index)


def _check_image(value: Any, image_id: str | None, fail: Callable[[str], AnnotationError]) -> None:
    if image_id is None or value is None or value == image_id:
        return
    raise fail(f"image_id {_quote(value)} is not this image ({_quote(image_id)})")


def _role(value: Any, fail: Callable[[str], AnnotationError]) -> str:
    if value is None:
        return LABEL
    if isinstance(value, str) and value in ROLES:
        return value
    raise fail(f"role {_quote(value)} is not one of: {', '.join(ROLES)}")


def _label_class(
    properties: dict, classes: Sequence[str], fail: Callable[[str], AnnotationError]
) -> str:
    value = properties.get("class")
    if value is None and len(classes) == 1:
        return classes[0]
    listed = ", ".join(classes)
    if value is None:
        raise fail(f"label has no class; properties.class must be one of: {listed}")
    if not isinstance(value, str) or value not in classes:
        raise fail(f"label class {_quote(value)} is not one of the detector's classes: {listed}")
    return value


def _label_kind(
    geometry: BaseGeometry, coordinates: list, shape: Any, fail: Callable[[str], AnnotationError]
) -> str:
    if geometry.geom_type == "Point":
        if shape == "box":
            raise fail('a Point cannot have properties.shape "box"')
        return "point"
    if shape == "box" or (len(coordinates) == 1 and _is_rectangle(coordinates[0])):
        if len(coordinates) != 1:
            raise fail("a box cannot have holes")
        return "box"
    return "polygon"


def _is_rectangle(ring: list[tuple[float, float]]) -> bool:
    """A closed ring of four corners whose edges alternate horizontal and vertical."""
    if len(ring) != 5:
        return False
    edges = "".join(_direction(a, b) for a, b in itertools.pairwise(ring))
    return edges in ("hvhv", "vhvh")


def _direction(a: tuple[float, float], b: tuple[float, float]) -> str:
    if a[1] == b[1] and a[0] != b[0]:
        return "h"
    if a[0] == b[0] and a[1] != b[1]:
        return "v"
    return "?"


# --- geometry, read from raw coordinates -----------------------------------------------------


_ALLOWED = {
    TRAINING: ("Polygon", "MultiPolygon"),
    TESTING: ("Polygon", "MultiPolygon"),
    ACCURACY: ("Polygon", "MultiPolygon"),
    LABEL: ("Polygon", "Point"),
}


def _geometry(
    geometry: Any,
    role: str,
    budget: _VertexBudget,
    where: str,
    index: int,
    fail: Callable[[str], AnnotationError],
) -> tuple[BaseGeometry, list]:
    """A valid WGS84 shapely geometry and its rings as (lon, lat) tuples."""
    if not isinstance(geometry, dict):
        raise fail("has no geometry object")
    kind = geometry.get("type")
    allowed = _ALLOWED[role]
    if not isinstance(kind, str) or kind not in allowed:
        raise fail(f"this {role} must be a {' or '.join(allowed)}, not {_quote(kind)}")
    coordinates = geometry.get("coordinates")
    if kind == "Point":
        budget.spend(1, where, index)
        position = _position(coordinates, fail)
        return Point(position), [[position]]
    polygons = [coordinates] if kind == "Polygon" else _list(coordinates, "polygons", fail)
    rings_of = []
    for rings in polygons:
        rings_of.append(_list(rings, "rings", fail))
        if not rings_of[-1]:
            raise fail("a polygon needs at least its outer ring")
        for ring in rings_of[-1]:
            budget.spend(len(_list(ring, "positions", fail)), where, index)
    if not rings_of:
        raise fail("a MultiPolygon needs at least one polygon")
    read = [[_ring(ring, fail) for ring in rings] for rings in rings_of]
    parts = [Polygon(rings[0], rings[1:]) for rings in read]
    shaped = parts[0] if kind == "Polygon" else MultiPolygon(parts)
    if not shaped.is_valid:
        raise fail(f"invalid {kind}: {shapely.is_valid_reason(shaped)}")
    return shaped, [ring for rings in read for ring in rings]


def _list(value: Any, of: str, fail: Callable[[str], AnnotationError]) -> list:
    if not isinstance(value, list | tuple):
        raise fail(f"coordinates are wrongly nested: expected a list of {of}")
    return list(value)


def _ring(ring: list, fail: Callable[[str], AnnotationError]) -> list[tuple[float, float]]:
    positions = [_position(p, fail) for p in ring]
    if len(ring) < 4:
        raise fail(f"a ring needs at least 4 positions, this one has {len(ring)}")
    if positions[0] != positions[-1]:
        raise fail("a ring is not closed: its last position must repeat its first")
    return positions


def _position(value: Any, fail: Callable[[str], AnnotationError]) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or not 2 <= len(value) <= 3:
        raise fail("coordinates are wrongly nested: a position is [longitude, latitude]")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise fail("a coordinate is not a number")
    lon, lat = value[0], value[1]
    # Chained comparisons also refuse NaN, infinities and integers too large for a float.
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise fail(f"position {_quote(value)} is outside WGS84 longitude/latitude")
    return float(lon), float(lat)


# --- into the image --------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _transformer(source: str, target: str) -> Transformer:
    return Transformer.from_crs(
        CRS.from_user_input(source), CRS.from_user_input(target), always_xy=True
    )


def _reproject(geometry: BaseGeometry, transformer: Transformer) -> BaseGeometry:
    def move(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))

    return shapely.transform(geometry, move)


def _project(
    geometry: BaseGeometry, to_image: Transformer, fail: Callable[[str], AnnotationError]
) -> BaseGeometry:
    local = _reproject(geometry, to_image)
    if not np.isfinite(shapely.get_coordinates(local)).all():
        raise fail("cannot be placed in the image's coordinate reference system")
    if not local.is_valid:
        raise fail(f"becomes invalid in the image's CRS: {shapely.is_valid_reason(local)}")
    return local


def _clip_to_image(
    area: BaseGeometry, image_box: Polygon, fail: Callable[[str], AnnotationError]
) -> Polygon | MultiPolygon:
    if image_box.covers(area):
        return area
    pieces = shapely.get_parts(shapely.get_parts(area.intersection(image_box)))
    parts = [p for p in pieces if p.geom_type == "Polygon"]
    clipped = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if clipped.is_empty or clipped.area == 0:
        raise fail("the area lies outside the image")
    return clipped


# --- between features ------------------------------------------------------------------------


def _check_no_overlap(training: list[_Raw], accuracy: list[_Raw]) -> None:
    """Accuracy areas must never be trained on. Areas are walked in collection order and each is
    compared with the earlier areas of the other role, so the first offending feature is named.

    Pairs whose bounding boxes meet are budgeted: thousands of slivers around one point would
    otherwise cost minutes (every pair touches), while real areas stay far below the budget."""
    if not training or not accuracy:
        return
    other_side = {TRAINING: _Side(accuracy), ACCURACY: _Side(training)}
    pairs = 0
    for area in sorted(training + accuracy, key=lambda r: r.index):
        side = other_side[area.role]
        candidates = side.earlier_near(area)
        pairs += len(candidates)
        if pairs > MAX_AREA_PAIRS:
            raise AnnotationError(
                f"{_where(area)}too many training and accuracy areas lie close together to check "
                f"them for overlap (more than {MAX_AREA_PAIRS} nearby pairs); merge some",
                area.index,
            )
        earlier = side.first_overlapping(area, candidates)
        if earlier is not None:
            raise AnnotationError(
                f"{_where(area)}{area.role} overlaps {earlier.role} feature {earlier.index}; "
                "accuracy areas must never be trained on",
                area.index,
            )


class _Side:
    """The areas of one role, indexed for overlap queries."""

    def __init__(self, areas: list[_Raw]) -> None:
        self.areas = areas
        self.geometries = np.array([a.geometry for a in areas], dtype=object)
        self.indices = np.array([a.index for a in areas])
        self.tree = shapely.STRtree(self.geometries)

    def earlier_near(self, area: _Raw) -> np.ndarray:
        """Positions of the areas before `area` whose bounding boxes meet its own, in order."""
        found = self.tree.query(area.geometry)
        return np.sort(found[self.indices[found] < area.index])

    def first_overlapping(self, area: _Raw, candidates: np.ndarray) -> _Raw | None:
        others = self.geometries[candidates]
        shared = shapely.area(shapely.intersection(area.geometry, others))
        smaller = np.minimum(area.geometry.area, shapely.area(others))
        hits = candidates[shared > OVERLAP_TOLERANCE * smaller]
        return self.areas[int(hits[0])] if len(hits) else None


def label_warnings(annotations: Annotations) -> tuple[AnnotationWarning, ...]:
    """One warning per label that will not be used whole: straddling a training area's edge
    (the part outside is ignored), mostly outside an accuracy area (not scored), in a testing
    area only, or in no area (kept, unused). Labels well inside their area say nothing."""
    labels = annotations.labels
    if not labels:
        return ()
    anchors = _anchors(labels)
    training = [a.geometry for a in annotations.training]
    accuracy = _covered(anchors, [a.geometry for a in annotations.accuracy])
    testing = _covered(anchors, [a.geometry for a in annotations.testing])
    training_union = shapely.union_all(training) if training else Polygon()
    trains = annotations.trained_indices()
    warnings = []
    for label, scored, tested in zip(labels, accuracy, testing, strict=True):
        where = _prefix(label.index, label.feature_id)
        if label.index in trains:
            if label.kind != "point" and not training_union.covers(label.geometry):
                area = _first_overlapping(annotations.training, label.geometry)
                warnings.append(
                    AnnotationWarning(
                        label.index, label.feature_id, "straddles_area",
                        f"{where}label extends past the edge of training_area feature "
                        f"{area.index}: the part outside is not used for training",
                    )
                )  # fmt: skip
            continue
        if scored:
            continue
        if tested:
            problem, message = (
                "in_testing_area",
                "label lies in a testing_area, which is not labelled: it is kept but not used; "
                "draw a training_area or accuracy_area round it to use it",
            )
        else:
            problem, message = (
                "outside_areas",
                "label lies in no training_area or accuracy_area: it is kept but not used; "
                "draw a training_area round it to learn from it",
            )
        warnings.append(AnnotationWarning(label.index, label.feature_id, problem, where + message))
    return tuple(warnings)


def _overlapping(labels: Sequence[Label], area: BaseGeometry) -> np.ndarray:
    """Which labels share some area with `area` (a polygon touching its edge does not)."""
    geometries = np.array([label.geometry for label in labels], dtype=object)
    hits = shapely.intersects(area, geometries)
    polygons = hits & (shapely.get_type_id(geometries) != 0)  # 0: Point
    shared = np.zeros(len(labels))
    if polygons.any():
        shared[polygons] = shapely.area(shapely.intersection(area, geometries[polygons]))
    return np.where(polygons, shared > 0, hits)


def _first_overlapping(areas: Sequence[Area], geometry: BaseGeometry) -> Area:
    for area in areas:
        if area.geometry.intersection(geometry).area > 0:
            return area
    return areas[0]


def _covered(points: np.ndarray, areas: Sequence[BaseGeometry]) -> np.ndarray:
    """Which points lie in any of the areas; one union, so many overlapping areas stay cheap."""
    if not areas:
        return np.zeros(len(points), bool)
    union = shapely.union_all(list(areas))
    shapely.prepare(union)
    return shapely.covers(union, points)


def _anchors(labels: Sequence[Label]) -> np.ndarray:
    """Where a label is: the point, or a point certainly inside the polygon."""
    return shapely.point_on_surface(np.array([label.geometry for label in labels], dtype=object))


# --- small helpers ---------------------------------------------------------------------------


def _area(raw: _Raw) -> Area:
    return Area(raw.role, raw.geometry, raw.index, raw.feature_id)


def _where(item: _Raw) -> str:
    return _prefix(item.index, item.feature_id)


def _prefix(index: int, feature_id: str | None) -> str:
    if feature_id is None:
        return f"feature {index}: "
    return f'feature {index} (id "{_clip_text(feature_id)}"): '


def _feature(item: Area | Label, to_wgs84: Transformer) -> dict:
    geometry = json.loads(shapely.to_geojson(_reproject(item.geometry, to_wgs84)))
    if isinstance(item, Label):
        properties = {"role": LABEL, "class": item.cls}
        if item.kind == "box":
            properties["shape"] = "box"
    else:
        properties = {"role": item.role}
    feature = {"type": "Feature", "properties": properties, "geometry": geometry}
    if item.feature_id is not None:
        feature["id"] = item.feature_id
    return feature


def _quote(value: Any) -> str:
    """A user's value for a message: short, and never a deep or huge structure spelled out."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return "a huge number"
    if value is None or isinstance(value, str | int | float):
        return _clip_text(json.dumps(value))
    if isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value[:3]):
        return _clip_text("[" + ", ".join(_quote(v) for v in value[:3]) + "]")
    return f"(a JSON {'array' if isinstance(value, list | tuple) else 'object'})"


def _clip_text(text: str) -> str:
    return text if len(text) <= _QUOTE_MAX else text[: _QUOTE_MAX - 3] + "..."
