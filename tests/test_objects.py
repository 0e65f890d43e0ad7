"""Probability rasters to objects: instance separation, filters, class choice, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely
import shapely.affinity
from affine import Affine
from scipy import ndimage

from inference.format import DetectorSpec
from inference.objects import extract_objects

RES = 0.3  # metres per pixel
ORIGIN = (500000.0, 5400000.0)  # UTM, metres
SIZE = 200  # px
SPEC = DetectorSpec(
    model_type="Segmentor",
    class_names=("tree", "building"),
    resolution_m=RES,
    tile_size=256,
    overlap_px=16,
    score_threshold=0.5,
    min_area_m2=1.0,
)
TRANSFORM = Affine(RES, 0.0, ORIGIN[0], 0.0, -RES, ORIGIN[1])


def grid(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in metres from the raster's top-left corner (x right, y down)."""
    rows, cols = np.mgrid[0:size, 0:size]
    return (cols + 0.5) * RES, (rows + 0.5) * RES


def disc(cx: float, cy: float, radius: float, size: int = SIZE) -> np.ndarray:
    """Signed distance (metres, positive inside) to a disc."""
    x, y = grid(size)
    return radius - np.hypot(x - cx, y - cy)


def rectangle(cx: float, cy: float, width: float, height: float, angle: float = 0.0) -> np.ndarray:
    """Signed distance-like field (metres, positive inside) of a rotated rectangle."""
    x, y = grid()
    a = np.deg2rad(angle)
    u = (x - cx) * np.cos(a) + (y - cy) * np.sin(a)
    v = -(x - cx) * np.sin(a) + (y - cy) * np.cos(a)
    return np.minimum(width / 2 - np.abs(u), height / 2 - np.abs(v))


def probabilities(*fields: np.ndarray | None, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """(1 + classes, H, W) softmax probabilities: one signed field per class (None: absent),
    soft edges about a pixel wide, optionally ragged by smooth noise of `noise` px."""
    rng = np.random.default_rng(seed)
    shape = next(f.shape for f in fields if f is not None)
    logits = [np.zeros(shape)]
    for field in fields:
        if field is None:
            logits.append(np.full(shape, -50.0))
            continue
        logit = field / RES
        if noise:
            wobble = ndimage.gaussian_filter(rng.standard_normal(logit.shape), 1.5)
            logit = logit + noise * wobble / wobble.std()
        logits.append(logit)
    stacked = np.stack(logits)
    exp = np.exp(stacked - stacked.max(axis=0))
    return (exp / exp.sum(axis=0)).astype(np.float32)


def centre_px(x: float, y: float) -> tuple[float, float]:
    """Map coordinates back to metres from the top-left corner, for comparison with fields."""
    return x - ORIGIN[0], ORIGIN[1] - y


def test_touching_crowns_come_apart() -> None:
    radius, gap = 3.0, 5.6  # centres 1.87 radii apart: overlapping crowns
    field = np.maximum(disc(30 - gap / 2, 30, radius), disc(30 + gap / 2, 30, radius))
    objects = extract_objects(probabilities(field, None), TRANSFORM, SPEC)

    assert [o.class_name for o in objects] == ["tree", "tree"]
    union_area = np.count_nonzero(field > 0) * RES**2
    assert sum(o.area_m2 for o in objects) == pytest.approx(union_area, rel=0.05)
    centres = sorted(centre_px(*o.geometry.centroid.coords[0]) for o in objects)
    for (x, y), expected_x in zip(centres, (30 - gap / 2, 30 + gap / 2), strict=True):
        assert x == pytest.approx(expected_x, abs=0.6)
        assert y == pytest.approx(30, abs=0.3)
    for obj in objects:
        assert obj.area_m2 == pytest.approx(union_area / 2, rel=0.1)
        assert obj.geometry.is_valid and obj.geometry.geom_type == "Polygon"
        assert 0.5 <= obj.score <= 1.0


def test_a_row_of_crowns_gives_one_object_each() -> None:
    field = np.max([disc(12 + 5.5 * i, 30, 3.0) for i in range(5)], axis=0)
    objects = extract_objects(probabilities(field, None, noise=0.5, seed=3), TRANSFORM, SPEC)
    assert len(objects) == 5


@pytest.mark.parametrize("angle", [0.0, 17.0, 45.0])
@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_a_building_is_not_split(angle: float, noise: float) -> None:
    field = rectangle(30, 30, 20, 8, angle)
    objects = extract_objects(probabilities(None, field, noise=noise, seed=1), TRANSFORM, SPEC)

    assert len(objects) == 1
    (building,) = objects
    assert building.class_name == "building" and building.class_index == 1
    assert building.area_m2 == pytest.approx(160, rel=0.05)


@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_an_l_shaped_building_is_one_object(noise: float) -> None:
    field = np.maximum(rectangle(30, 34, 24, 8), rectangle(22, 26, 8, 24))
    objects = extract_objects(probabilities(None, field, noise=noise, seed=2), TRANSFORM, SPEC)
    assert len(objects) == 1
    assert objects[0].area_m2 == pytest.approx(np.count_nonzero(field > 0) * RES**2, rel=0.05)


def test_a_long_thin_building_is_one_object() -> None:
    field = rectangle(30, 30, 40, 4, 17.0)
    objects = extract_objects(probabilities(None, field, noise=0.5, seed=4), TRANSFORM, SPEC)
    assert len(objects) == 1


def test_below_threshold_gives_nothing() -> None:
    probs = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    probs[0] = 0.35
    probs[2] = 0.25
    probs[1] = 0.4  # wins the argmax everywhere, but stays under the 0.5 threshold
    assert extract_objects(probs, TRANSFORM, SPEC) == []


def test_specks_under_the_minimum_area_are_dropped() -> None:
    probs = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    probs[0] = 1.0
    probs[:, 50:53, 50:53] = np.array([0.0, 1.0, 0.0])[:, None, None]  # 9 px = 0.81 m²
    probs[:, 100:110, 100:110] = np.array([0.0, 1.0, 0.0])[:, None, None]  # 9 m²
    objects = extract_objects(probs, TRANSFORM, SPEC)
    assert len(objects) == 1
    assert objects[0].area_m2 == pytest.approx(9.0, rel=0.02)
    assert objects[0].score == pytest.approx(1.0)


def test_the_class_is_the_argmax() -> None:
    probs = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    probs[0] = 1.0
    probs[:, 40:80, 20:60] = np.array([0.0, 0.55, 0.45])[:, None, None]  # tree wins
    probs[:, 40:80, 100:140] = np.array([0.0, 0.45, 0.55])[:, None, None]  # building wins
    objects = extract_objects(probs, TRANSFORM, SPEC)
    assert [(o.class_name, o.class_index) for o in objects] == [("tree", 0), ("building", 1)]
    assert [o.score for o in objects] == pytest.approx([0.55, 0.55])
    # touching objects of two classes stay two objects
    probs[:, 40:80, 60:100] = np.array([0.0, 0.3, 0.7])[:, None, None]
    objects = extract_objects(probs, TRANSFORM, SPEC)
    assert [o.class_name for o in objects] == ["tree", "building"]
    assert objects[1].area_m2 == pytest.approx(80 * 40 * RES**2)


def test_same_pixels_give_identical_objects() -> None:
    field = np.maximum(disc(20, 20, 3.0), disc(25.5, 21, 2.5))
    field = np.maximum(field, rectangle(40, 40, 20, 8, 17.0))
    probs = probabilities(field, rectangle(30, 10, 12, 6, 30.0), noise=0.5, seed=5)
    first = extract_objects(probs, TRANSFORM, SPEC)
    second = extract_objects(probs.copy(), TRANSFORM, SPEC)
    assert len(first) >= 3
    assert [o.geometry.wkb for o in first] == [o.geometry.wkb for o in second]
    assert [(o.class_name, o.score, o.area_m2) for o in first] == [
        (o.class_name, o.score, o.area_m2) for o in second
    ]


def test_objects_do_not_depend_on_where_they_lie_in_the_raster() -> None:
    """Overlapping tiles see an object at different pixel offsets: it must come out the same."""
    field = np.maximum(disc(8, 8, 3.0), disc(13.5, 9, 2.5))
    patch = probabilities(field[:60, :60], None, noise=0.5, seed=6)
    placed = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    placed[0] = 1.0
    dx, dy = 37, 91
    placed[:, dy : dy + 60, dx : dx + 60] = patch
    here = extract_objects(patch, TRANSFORM, SPEC)
    there = extract_objects(placed, TRANSFORM, SPEC)
    assert len(here) == len(there) == 2
    for a, b in zip(here, there, strict=True):
        shifted = shapely.affinity.translate(a.geometry, dx * RES, -dy * RES)
        assert shapely.equals_exact(shifted, b.geometry, tolerance=1e-6)
        assert (a.score, a.area_m2) == (b.score, b.area_m2)


def test_keep_filters_objects() -> None:
    field = np.maximum(disc(15, 30, 3.0), disc(45, 30, 3.0))
    probs = probabilities(field, None)
    middle_x = ORIGIN[0] + 30.0
    seen = []

    def west(polygon: shapely.Polygon) -> bool:
        seen.append(polygon)
        return polygon.representative_point().x < middle_x

    objects = extract_objects(probs, TRANSFORM, SPEC, keep=west)
    assert len(seen) == 2 and len(objects) == 1
    assert objects[0].geometry.centroid.x < middle_x
    assert all(p.bounds[0] > ORIGIN[0] for p in seen)  # keep sees CRS coordinates


def test_objects_are_sorted_by_class_then_position() -> None:
    trees = np.max([disc(10 + 15 * i, 50 - 12 * i, 2.5) for i in range(3)], axis=0)
    buildings = np.maximum(rectangle(20, 15, 10, 6), rectangle(45, 50, 10, 6))
    objects = extract_objects(probabilities(trees, buildings), TRANSFORM, SPEC)
    keys = [(o.class_index, o.geometry.bounds[1], o.geometry.bounds[0]) for o in objects]
    assert len(objects) == 5 and keys == sorted(keys)


def test_metres_per_unit_scales_areas() -> None:
    probs = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    probs[0] = 1.0
    probs[:, 10:20, 10:20] = np.array([0.0, 1.0, 0.0])[:, None, None]
    (obj,) = extract_objects(probs, TRANSFORM, SPEC, metres_per_unit=0.5)
    assert obj.area_m2 == pytest.approx(100 * RES**2 * 0.25)


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="1 \\+ 2 classes"):
        extract_objects(np.zeros((2, 10, 10), dtype=np.float32), TRANSFORM, SPEC)


def test_packed_distance_transform_matches_one_per_mask() -> None:
    """Components are packed on one canvas for the distance transform: each slot must hold
    exactly the distance of its component alone."""
    from inference.objects import _packed_canvas

    rng = np.random.default_rng(7)
    masks = [
        ndimage.binary_opening(rng.random((h, w)) < 0.8)
        for h, w in [(5, 40), (30, 7), (12, 12), (1, 3), (25, 25), (40, 2)]
    ]
    canvas, corners = _packed_canvas(masks)
    distance = ndimage.distance_transform_edt(canvas)
    for mask, (row, col) in zip(masks, corners, strict=True):
        slot = distance[row : row + mask.shape[0] + 2, col : col + mask.shape[1] + 2]
        np.testing.assert_array_equal(slot, ndimage.distance_transform_edt(np.pad(mask, 1)))


def test_a_box_detector_returns_each_object_as_its_bounding_box() -> None:
    """Users who label boxes get boxes back: the same objects, as axis-aligned rectangles."""
    crowns = np.max([disc(12 + 5.5 * i, 30, 3.0) for i in range(3)], axis=0)
    probs = probabilities(crowns, rectangle(40, 10, 8, 4, angle=30.0))
    outlines = extract_objects(probs, TRANSFORM, SPEC)
    boxes = extract_objects(probs, TRANSFORM, dataclasses.replace(SPEC, output_shape="box"))
    assert len(boxes) == len(outlines) == 4
    for outline, found in zip(outlines, boxes, strict=True):
        assert found.class_name == outline.class_name
        assert found.geometry.equals(shapely.box(*outline.geometry.bounds))
        assert found.area_m2 == pytest.approx(found.geometry.area)
        assert found.area_m2 > outline.area_m2  # a disc or slanted roof fills part of its box


BOX_SPEC = dataclasses.replace(SPEC, output_shape="box", box_regression=True)


def with_boxes(probs: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """`probs` plus the 4 distance channels of a box-regression detector: each pixel predicts
    the box (left, top, right, bottom; raster pixels, edges at integers) of the first of `boxes`
    that holds its centre (a fixed 5 px box elsewhere, never read)."""
    rows, cols = np.mgrid[0 : probs.shape[1], 0 : probs.shape[2]] + 0.5
    distances = np.stack([np.full(rows.shape, 5.0, np.float32)] * 4)
    for left, top, right, bottom in reversed(boxes):
        inside = (cols >= left) & (cols <= right) & (rows >= top) & (rows <= bottom)
        for channel, value in enumerate([rows - top, cols - left, bottom - rows, right - cols]):
            distances[channel][inside] = value[inside]
    return np.concatenate([probs, distances.astype(np.float32)])


def pixel_bounds(geometry) -> tuple[float, ...]:
    """(left, top, right, bottom) of a geometry in raster pixels."""
    left, bottom, right, top = geometry.bounds
    (col0, row0), (col1, row1) = ~TRANSFORM * (left, top), ~TRANSFORM * (right, bottom)
    return col0, row0, col1, row1


def test_a_box_regression_detector_returns_the_box_its_pixels_agree_on() -> None:
    """The object is the box the pixels of its core predict, however small the core, not the
    core's own bounding box."""
    core = disc(15.0, 15.0, 1.5)  # a 10 px wide core at pixel (50, 50)
    probs = with_boxes(probabilities(core, None), [(30.0, 35.0, 72.0, 64.0)])
    (found,) = extract_objects(probs, TRANSFORM, BOX_SPEC)
    assert pixel_bounds(found.geometry) == pytest.approx((30.0, 35.0, 72.0, 64.0), abs=1e-6)
    assert found.area_m2 == pytest.approx(42 * 29 * RES**2)
    (core_box,) = extract_objects(
        probabilities(core, None), TRANSFORM, dataclasses.replace(SPEC, output_shape="box")
    )
    assert core_box.area_m2 < found.area_m2 / 5


def test_fragments_agreeing_on_a_box_are_one_object_and_neighbours_stay_two() -> None:
    """Two fragments of one crown predict its box: one object. Two crowns merged in the mask
    whose pixels predict their own boxes come back as two."""
    fragments = np.maximum(disc(10.0, 10.0, 1.6), disc(14.0, 10.0, 1.0))
    one_box = (20.0, 20.0, 60.0, 50.0)
    probs = with_boxes(probabilities(fragments, None), [one_box])
    found = extract_objects(probs, TRANSFORM, BOX_SPEC)
    assert len(found) == 1
    assert pixel_bounds(found[0].geometry) == pytest.approx(one_box, abs=1e-6)

    pair = np.maximum(disc(40.0, 40.0, 2.0), disc(43.0, 40.0, 2.0))  # cores overlap: one mask
    mask = extract_objects(probabilities(pair, None), TRANSFORM, SPEC)
    assert len(mask) == 1
    # Pixels west of the midline (x = 41.5 m, column 138.3) belong to the west crown.
    west, east = (118.0, 118.0, 148.0, 148.0), (130.0, 118.0, 160.0, 148.0)  # IoU 0.43
    classes = probabilities(pair, None)
    west_side = np.arange(SIZE) < 138
    probs = np.where(west_side, with_boxes(classes, [west]), with_boxes(classes, [east]))
    found = extract_objects(probs, TRANSFORM, BOX_SPEC)
    got = sorted(pixel_bounds(o.geometry) for o in found)
    assert len(got) == 2
    for found_box, box in zip(got, [west, east], strict=True):
        assert found_box == pytest.approx(box, abs=1e-6)


def test_regressed_boxes_do_not_depend_on_where_they_lie() -> None:
    core = disc(15.0, 15.0, 1.5)
    box = (30.0, 35.0, 72.0, 64.0)
    probs = with_boxes(probabilities(core, None), [box])
    shifted = np.roll(probs, (0, 37, 23), axis=(0, 1, 2))
    (a,) = extract_objects(probs, TRANSFORM, BOX_SPEC)
    (b,) = extract_objects(shifted, TRANSFORM, BOX_SPEC)
    moved = shapely.affinity.translate(a.geometry, 23 * RES, -37 * RES)
    assert b.geometry.equals_exact(moved, 1e-6)
    assert b.score == a.score


def test_a_box_regression_raster_needs_its_distance_channels() -> None:
    with pytest.raises(ValueError, match="4 box distances"):
        extract_objects(probabilities(disc(15, 15, 2), None), TRANSFORM, BOX_SPEC)
