"""Training annotations: a WGS84 FeatureCollection read into image-CRS areas and labels, and
every bad collection refused with the first bad feature named, whatever its shape."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import CRS, Transformer
from shapely.geometry import Point, Polygon, box, mapping, shape
from shapely.geometry.base import BaseGeometry

import trainer.annotations as annotations_module
from trainer.annotations import (
    MAX_VERTICES,
    ROLES,
    AnnotationError,
    Annotations,
    parse_annotations,
)

# A 400 x 300 m image in UTM 33N.
IMAGE_CRS = CRS.from_epsg(32633).to_wkt()
BOUNDS = (500_000.0, 5_400_000.0, 500_400.0, 5_400_300.0)
CLASSES = ("tree", "car")
TO_WGS84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
TO_IMAGE = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
X0, Y0 = BOUNDS[:2]


def local_box(left: float, bottom: float, right: float, top: float) -> Polygon:
    """A box in metres from the image's lower-left corner."""
    return box(X0 + left, Y0 + bottom, X0 + right, Y0 + top)


def move(geometry: BaseGeometry, transformer: Transformer) -> BaseGeometry:
    return shapely.transform(
        geometry, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
    )


def geojson(geometry: BaseGeometry) -> dict:
    """An image-CRS geometry as RFC 7946 GeoJSON (WGS84), with lists as json.loads gives."""
    return json.loads(json.dumps(mapping(move(geometry, TO_WGS84))))


def feature(geometry: BaseGeometry | dict, feature_id: str | None = None, **properties) -> dict:
    if isinstance(geometry, BaseGeometry):
        geometry = geojson(geometry)
    out = {"type": "Feature", "properties": properties, "geometry": geometry}
    if feature_id is not None:
        out["id"] = feature_id
    return out


def collection(*features: dict) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def parse(value, **overrides) -> Annotations:
    options = {"classes": CLASSES, "image_crs_wkt": IMAGE_CRS, "image_bounds": BOUNDS}
    return parse_annotations(value, **{**options, **overrides})


def wgs84_box_around(x: float, y: float, half_degrees: float = 0.0001) -> dict:
    """A box drawn on a web map: axis-aligned in longitude/latitude, not in the image CRS."""
    lon, lat = TO_WGS84.transform(X0 + x, Y0 + y)
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)]
    ring = [[lon + dx * half_degrees, lat + dy * half_degrees / 2] for dx, dy in corners]
    return {"type": "Polygon", "coordinates": [ring]}


TREE_CLASS, CAR_CLASS = {"class": "tree"}, {"class": "car"}
TREE = Polygon([(X0 + 50, Y0 + 50), (X0 + 80, Y0 + 52), (X0 + 66, Y0 + 90), (X0 + 50, Y0 + 50)])


def scene() -> list[dict]:
    """Training | accuracy side by side, a testing area running off the image, four labels."""
    return [
        feature(local_box(0, 0, 200, 150), "train", role="training_area"),
        feature(local_box(200, 0, 300, 150), role="accuracy_area"),
        feature(local_box(300, 150, 500, 300), role="testing_area"),
        feature(TREE, "t1", **TREE_CLASS),
        feature(wgs84_box_around(120, 100), role="label", **CAR_CLASS),
        feature(Point(X0 + 250, Y0 + 75), "p1", **TREE_CLASS),
        feature(local_box(220, 20, 230, 25), shape="box", **CAR_CLASS),
    ]


# --- a valid collection ----------------------------------------------------------------------


def test_areas_and_labels_in_the_image_crs():
    annotations = parse(collection(*scene()), image_id="img-1")
    (training,) = annotations.training
    (accuracy,) = annotations.accuracy
    (testing,) = annotations.testing
    assert [area.index for area in (training, accuracy, testing)] == [0, 1, 2]
    assert training.feature_id == "train" and accuracy.feature_id is None

    assert annotations.counts() == {"car": 2, "tree": 2}
    assert [(label.index, label.kind) for label in annotations.labels] == [
        (3, "polygon"),
        (4, "box"),
        (5, "point"),
        (6, "box"),
    ]
    assert [label.index for label in annotations.labels_in(training)] == [3, 4]
    assert [label.index for label in annotations.labels_in(accuracy)] == [5, 6]
    assert annotations.labels_in(testing) == []

    # Back in the image CRS to well under a micrometre: the transform is the right one.
    tree = annotations.labels[0]
    assert tree.cls == "tree" and tree.feature_id == "t1"
    assert np.allclose(
        shapely.get_coordinates(tree.geometry), shapely.get_coordinates(TREE), rtol=0, atol=1e-6
    )
    drawn_box = move(shape(wgs84_box_around(120, 100)), TO_IMAGE)
    assert annotations.labels[1].geometry.equals_exact(drawn_box, 1e-6)
    assert annotations.labels[2].geometry.equals_exact(Point(X0 + 250, Y0 + 75), 1e-6)
    assert training.geometry.equals_exact(local_box(0, 0, 200, 150), 1e-6)


def test_an_area_running_off_the_image_is_clipped_to_it():
    testing = parse(collection(*scene())).testing[0]
    assert testing.geometry.geom_type == "Polygon"
    assert testing.geometry.symmetric_difference(local_box(300, 150, 400, 300)).area < 1e-6
    assert testing.geometry.area == pytest.approx(100 * 150, rel=1e-9)


def test_round_trip_through_geojson():
    annotations = parse(collection(*scene()))
    out = annotations.as_geojson(IMAGE_CRS)
    again = parse(json.loads(json.dumps(out)))
    areas = annotations.training + annotations.testing + annotations.accuracy
    areas_again = again.training + again.testing + again.accuracy
    pairs = [
        *zip(areas, areas_again, strict=True),
        *zip(annotations.labels, again.labels, strict=True),
    ]
    for before, after in pairs:
        assert type(before) is type(after)
        assert (before.index, before.feature_id) == (after.index, after.feature_id)
        # Vertex order may change where an area is clipped to the image again.
        assert shapely.normalize(before.geometry).equals_exact(
            shapely.normalize(after.geometry), 1e-6
        )
    assert [(x.cls, x.kind) for x in again.labels] == [(x.cls, x.kind) for x in annotations.labels]
    assert again.counts() == annotations.counts()


def test_a_single_class_detector_may_omit_the_class():
    annotations = parse(
        collection(feature(local_box(0, 0, 200, 150), role="training_area"), feature(TREE)),
        classes=("tree",),
    )
    assert annotations.counts() == {"tree": 1}


def test_without_require_labels_testing_areas_alone_are_enough():
    annotations = parse(
        collection(feature(local_box(0, 0, 100, 100), role="testing_area")), require_labels=False
    )
    assert len(annotations.testing) == 1 and annotations.labels == ()


# --- each refusal names the feature ------------------------------------------------------------


def with_feature(extra: dict) -> dict:
    """The valid scene plus one feature, which is feature 7."""
    return collection(*scene(), extra)


def unclosed() -> dict:
    geometry = geojson(local_box(10, 10, 20, 20))
    geometry["coordinates"][0].pop()
    return feature(geometry, **TREE_CLASS)


def bowtie() -> Polygon:
    return Polygon([(X0 + 10, Y0 + 10), (X0 + 30, Y0 + 30), (X0 + 30, Y0 + 10), (X0 + 10, Y0 + 30)])


def flat_polygon() -> dict:
    geometry = geojson(local_box(10, 10, 20, 20))
    geometry["coordinates"] = geometry["coordinates"][0]
    return feature(geometry, **TREE_CLASS)


def huge_ring() -> dict:
    lon, lat = TO_WGS84.transform(X0 + 10, Y0 + 10)
    ring = [[lon, lat]] * 1_000_000
    return feature({"type": "Polygon", "coordinates": [ring]}, **TREE_CLASS)


REFUSALS = {
    "label outside the image": (
        feature(local_box(600, 0, 610, 10), **TREE_CLASS),
        "label lies outside the image",
    ),
    "area outside the image": (
        feature(local_box(600, 0, 700, 100), role="training_area"),
        "outside the image",
    ),
    "self-intersecting bowtie": (feature(bowtie(), **TREE_CLASS), "Self-intersection"),
    "unclosed ring": (unclosed(), "not closed"),
    "ring of three positions": (
        feature(
            {"type": "Polygon", "coordinates": [[[15, 48.75], [15.001, 48.75], [15, 48.75]]]},
            **TREE_CLASS,
        ),
        "at least 4 positions",
    ),
    "a million vertices": (huge_ring(), f"more than {MAX_VERTICES} vertices"),
    "outside WGS84": (
        feature({"type": "Point", "coordinates": [200.0, 45.0]}, **TREE_CLASS),
        "outside WGS84",
    ),
    "NaN coordinate": (
        feature({"type": "Point", "coordinates": [math.nan, 45.0]}, **TREE_CLASS),
        "outside WGS84",
    ),
    "string coordinate": (
        feature({"type": "Point", "coordinates": ["15", 48.75]}, **TREE_CLASS),
        "not a number",
    ),
    "unknown role": (
        feature(local_box(0, 0, 10, 10), role="validation_area"),
        "training_area, testing_area, accuracy_area, label",
    ),
    "wrong nesting": (flat_polygon(), "wrongly nested"),
    "label as MultiPolygon": (
        feature(
            {"type": "MultiPolygon", "coordinates": [geojson(TREE)["coordinates"]]}, **TREE_CLASS
        ),
        "label must be a Polygon or Point",
    ),
    "no geometry": (feature({"type": "Point"}, **TREE_CLASS) | {"geometry": None}, "no geometry"),
    "non-object properties": (
        {"type": "Feature", "properties": ["role"], "geometry": geojson(TREE)},
        "properties must be an object",
    ),
    "not a Feature": ({"type": "Polygon", "coordinates": []}, "not a GeoJSON Feature"),
    "overlapping training and accuracy areas": (
        feature(local_box(150, 0, 250, 100), role="accuracy_area"),
        "accuracy_area overlaps training_area feature 0",
    ),
    "wrong image": (
        feature(TREE, image_id="img-2", **TREE_CLASS),
        'image_id "img-2" is not this image ("img-1")',
    ),
}


@pytest.mark.parametrize("extra, expected", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_name_the_feature(extra, expected):
    with pytest.raises(AnnotationError) as caught:
        parse(with_feature(extra), image_id="img-1")
    assert caught.value.feature_index == 7
    assert str(caught.value).startswith("feature 7")
    assert expected in str(caught.value)


def test_undeclared_class_message_names_feature_id_and_classes():
    extra = feature(TREE, "b7", **{"class": "truck"})
    with pytest.raises(AnnotationError) as caught:
        parse(with_feature(extra))
    assert str(caught.value) == (
        'feature 7 (id "b7"): label class "truck" is not one of the detector\'s classes: tree, car'
    )


def test_the_first_bad_feature_is_named():
    bad = feature(TREE, **{"class": "truck"})
    with pytest.raises(AnnotationError) as caught:
        parse(collection(*scene()[:3], bad, feature(bowtie(), **TREE_CLASS), bad))
    assert caught.value.feature_index == 3


# --- forgiven, with a warning that names the feature ----------------------------------------

FORGIVEN = {
    "label outside every area": (
        feature(Point(X0 + 100, Y0 + 250), **TREE_CLASS),
        "outside_areas",
        "lies in no training_area or accuracy_area: it is kept but not used",
    ),
    "label only in a testing area": (
        feature(Point(X0 + 350, Y0 + 200), **TREE_CLASS),
        "in_testing_area",
        "lies in a testing_area, which is not labelled",
    ),
    "label straddling the training area's top edge, centre inside": (
        feature(local_box(20, 140, 40, 156), "edge", **TREE_CLASS),
        "straddles_area",
        "extends past the edge of training_area feature 0: the part outside is not used",
    ),
    "label straddling the training area's top edge, centre outside": (
        feature(local_box(60, 146, 80, 170), **TREE_CLASS),
        "straddles_area",
        "extends past the edge of training_area feature 0",
    ),
}


@pytest.mark.parametrize("extra, problem, expected", FORGIVEN.values(), ids=FORGIVEN.keys())
def test_labels_not_used_whole_are_kept_with_a_warning(extra, problem, expected):
    annotations = parse(with_feature(extra), image_id="img-1")
    assert [label.index for label in annotations.labels][-1] == 7
    (warning,) = annotations.warnings
    assert (warning.index, warning.problem) == (7, problem)
    assert warning.message.startswith("feature 7")
    assert expected in warning.message


def test_a_straddling_label_trains_with_the_part_inside():
    """Its centre 1 m outside the training area, a label still teaches "object" inside it:
    today's user error (a box drawn a little past the edge) must not become background."""
    straddling = feature(local_box(60, 146, 80, 170), **TREE_CLASS)
    annotations = parse(with_feature(straddling))
    (training,) = annotations.training
    assert 7 in [label.index for label in annotations.labels_in(training)]
    assert annotations.used_labels() == 3


def test_a_label_owned_by_an_accuracy_area_never_trains():
    # Centre in the accuracy area, its west side over the training area.
    scored = feature(local_box(195, 60, 215, 80), **TREE_CLASS)
    annotations = parse(with_feature(scored))
    (training,), (accuracy,) = annotations.training, annotations.accuracy
    assert 7 not in [label.index for label in annotations.labels_in(training)]
    assert 7 in [label.index for label in annotations.labels_in(accuracy)]
    assert annotations.warnings == ()


def test_labels_touching_an_area_from_outside_do_not_train():
    touching = feature(local_box(60, 150, 80, 170), **TREE_CLASS)  # shares the top edge only
    annotations = parse(with_feature(touching))
    assert 7 not in [label.index for label in annotations.labels_in(annotations.training[0])]
    assert annotations.warnings[0].problem == "outside_areas"


def test_labels_only_outside_training_areas_cannot_train():
    with pytest.raises(AnnotationError, match="no label lies in a training_area"):
        parse(
            collection(
                feature(local_box(0, 0, 100, 100), role="training_area"),
                feature(Point(X0 + 150, Y0 + 250), **TREE_CLASS),
            )
        )


def test_a_feature_without_image_id_is_accepted_for_any_image():
    assert len(parse(collection(*scene()), image_id="any").labels) == 4


@pytest.mark.parametrize(
    "value", [None, [], "FeatureCollection", {"type": "Feature"}, {"type": "FeatureCollection"}]
)
def test_not_a_feature_collection(value):
    with pytest.raises(AnnotationError, match="FeatureCollection") as caught:
        parse(value)
    assert caught.value.feature_index is None


def test_zero_labels():
    with pytest.raises(AnnotationError, match="no labels") as caught:
        parse(collection(*scene()[:3]))
    assert caught.value.feature_index is None


def test_no_training_area():
    with pytest.raises(AnnotationError, match="no training_area"):
        parse(
            collection(
                feature(local_box(0, 0, 200, 150), role="accuracy_area"),
                feature(TREE, **TREE_CLASS),
            )
        )


def test_touching_training_and_accuracy_areas_are_fine():
    # Features 0 and 1 of the scene share an edge; they only overlap once one of them grows.
    assert len(parse(collection(*scene())).accuracy) == 1


def sliver(i: int, n: int) -> Polygon:
    """The i-th of n thin triangles that fan out from the image's centre."""
    cx, cy = X0 + 200, Y0 + 150
    angles = [2 * math.pi * k / n for k in (i, i + 1)]
    rim = [(cx + 100 * math.cos(a), cy + 100 * math.sin(a)) for a in angles]
    return Polygon([(cx, cy), *rim])


def test_slivers_around_one_point_are_refused_before_they_cost_minutes(monkeypatch):
    # Every training/accuracy pair touches at the centre, so every pair would need an overlay.
    monkeypatch.setattr(annotations_module, "MAX_AREA_PAIRS", 50)
    n = 40
    roles = ("training_area", "accuracy_area")
    slivers = [feature(sliver(i, n), role=roles[i % 2]) for i in range(n)]
    label = feature(Point(X0 + 201, Y0 + 150.5), **TREE_CLASS)
    assert len(parse(collection(*slivers[:8], label)).accuracy) == 4
    with pytest.raises(AnnotationError, match="too many training and accuracy areas") as caught:
        parse(collection(*slivers, label))
    assert 0 < caught.value.feature_index < n


# --- hostile input -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=25,
)


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Usually the valid value, sometimes anything: junk early on hides the checks behind it."""
    return st.integers(0, 9).flatmap(lambda n: json_values if n == 0 else valid)


# Around the image (about lon 15.000-15.006, lat 48.753-48.756), so that geometries often survive
# the early checks and reach projection, clipping and the checks between features.
lons, lats = st.floats(14.999, 15.007), st.floats(48.752, 48.757)
positions = mostly(st.tuples(lons, lats).map(list))


@st.composite
def rings(draw) -> list:
    if draw(st.booleans()):  # a box, often valid
        (west, east), (south, north) = (
            sorted(draw(st.tuples(lons, lons))),
            sorted(draw(st.tuples(lats, lats))),
        )
        return [[west, south], [east, south], [east, north], [west, north], [west, south]]
    ring = draw(st.lists(positions, min_size=0, max_size=6))
    if ring and draw(st.booleans()):
        ring.append(ring[0])
    return ring


polygon_coordinates = st.lists(rings(), min_size=1, max_size=2)
coordinates = {
    "Point": positions,
    "Polygon": mostly(polygon_coordinates),
    "MultiPolygon": mostly(st.lists(polygon_coordinates, max_size=2)),
}
geometries = st.sampled_from(sorted(coordinates)).flatmap(
    lambda kind: st.fixed_dictionaries({"type": st.just(kind), "coordinates": coordinates[kind]})
)
properties = st.fixed_dictionaries(
    {"class": mostly(st.sampled_from(CLASSES))},
    optional={
        "role": mostly(st.sampled_from(ROLES)),
        "shape": mostly(st.just("box")),
        "image_id": mostly(st.just("img-1")),
    },
)
features = st.fixed_dictionaries(
    {
        "type": mostly(st.just("Feature")),
        "geometry": mostly(geometries),
        "properties": mostly(properties),
    },
    optional={"id": mostly(st.text(max_size=4) | st.integers())},
)
collections = st.fixed_dictionaries(
    {"type": mostly(st.just("FeatureCollection")), "features": st.lists(features, max_size=5)}
)
# No example database: it would leave a .hypothesis folder in the checkout.
FUZZ = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def only_annotation_errors(value) -> None:
    try:
        parse(value, image_id="img-1")
    except AnnotationError as error:
        assert str(error)


@FUZZ
@given(json_values)
def test_arbitrary_json_raises_only_annotation_errors(value):
    only_annotation_errors(value)


@FUZZ
@given(collections)
def test_geojson_shaped_input_raises_only_annotation_errors(value):
    only_annotation_errors(value)


@FUZZ
@given(st.lists(features, max_size=3), st.integers(0, 7))
def test_junk_among_valid_features_raises_only_annotation_errors(extra, at):
    valid = scene()
    only_annotation_errors(collection(*valid[:at], *extra, *valid[at:]))
