"""Training targets part touching objects of a class, and the loss weights those gaps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from trainer.loop import IGNORE, weighted_cross_entropy
from trainer.targets import BORDER, as_classes, class_target

CLASSES = np.array([0, 1, 1, 2, 2], np.uint8)  # ids 1, 2: trees (class 1); 3, 4: cars (class 2)


def touching_objects() -> np.ndarray:
    """Two trees 12 px wide side by side (ids 1, 2), a car 5 px wide (id 3) touching tree 2,
    and a second car (id 4) touching the first."""
    ids = np.zeros((34, 40), np.int32)
    ids[5:29, 0:12] = 1
    ids[5:29, 12:24] = 2
    ids[5:29, 24:29] = 3
    ids[5:29, 29:34] = 4
    return ids


def test_gap_radius_parts_touching_objects_of_a_class_only():
    ids = touching_objects()
    for radius, tree_gap in ((0, 1), (1, 2), (2, 4), (5, 4)):
        target = class_target(ids, CLASSES, radius)
        tree_gap_columns = np.unique(np.nonzero(target[:, :24] == BORDER)[1])
        assert len(tree_gap_columns) == tree_gap, radius
        assert tree_gap_columns.min() >= 12 - tree_gap and tree_gap_columns.max() < 12 + tree_gap
        # The trees come apart, and so do the cars; a car touching a tree keeps its pixels.
        assert ndimage.label(as_classes(target) == 1)[1] == 2
        assert ndimage.label(as_classes(target) == 2)[1] == 2
        assert (target[:, 24] == 2)[5:29].all() and (target[:, 33] == 2)[5:29].all()
        # Cars 5 px wide: whatever the radius asked, their gap stays 1 or 2 px.
        car_gap = np.unique(np.nonzero(target[:, 24:] == BORDER)[1])
        assert len(car_gap) == (1 if radius == 0 else 2), radius


def test_border_weight_one_is_torch_cross_entropy_and_more_weighs_the_gap():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0] = IGNORE
    border = torch.zeros_like(target, dtype=torch.bool)
    border[:, 4] = True
    target[border] = 0  # gap pixels are background
    weights = torch.tensor([0.5, 1.0, 2.0])
    plain = torch.nn.functional.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE)
    assert torch.equal(weighted_cross_entropy(logits, target, weights, border, 1.0), plain)

    # A model that calls the gap pixels objects is punished more when they weigh more.
    wrong = logits.clone()
    wrong[:, 1][border] = 10.0
    assert weighted_cross_entropy(wrong, target, weights, border, 5.0) > weighted_cross_entropy(
        wrong, target, weights, border, 1.0
    )
    # Weights all one: the weighted mean over valid pixels, by hand.
    ones = torch.ones(3)
    per_pixel = torch.nn.functional.cross_entropy(
        logits, target, ignore_index=IGNORE, reduction="none"
    )
    valid = target != IGNORE
    emphasis = torch.where(border, 3.0, 1.0) * valid
    expected = (per_pixel * emphasis).sum() / emphasis.sum()
    actual = weighted_cross_entropy(logits, target, ones, border, 3.0)
    assert torch.allclose(actual, expected)


def box_labels() -> list:
    """Two touching 10 x 8 m boxes side by side and a polygon (a triangle) below them."""
    from shapely.geometry import Polygon, box

    from trainer.annotations import Label

    return [
        Label("tree", box(0, 8, 10, 16), "box", 0, None),
        Label("tree", box(10, 8, 20, 16), "box", 1, None),
        Label("tree", Polygon([(0, 0), (8, 0), (0, 6)]), "polygon", 2, None),
    ]


def test_box_labels_train_as_their_inscribed_ellipse_with_the_corners_ignored():
    from affine import Affine

    from trainer.data import labelled_target

    transform = Affine(0.5, 0, 0, 0, -0.5, 16)  # 0.5 m pixels, 40 x 32 px
    whole = labelled_target(box_labels(), ["tree"], transform, (32, 40), 0.5, 2, "box")[0]
    ellipse = labelled_target(box_labels(), ["tree"], transform, (32, 40), 0.5, 2, "ellipse")[0]
    assert not (whole == IGNORE).any()
    top = ellipse[:16]  # the boxes (rows 0-15); the polygon lies below
    # Corners teach nothing; the middle of each side is still the object, so the ellipse spans
    # the whole box and a prediction's bounding box can match the label.
    for row, col in ((0, 0), (15, 0), (0, 39), (15, 39), (0, 19), (0, 20)):
        assert top[row, col] == IGNORE, (row, col)
    assert (top[:, 0] == 1).any() and (top[0, :20] == 1).any() and (top[15, :20] == 1).any()
    assert (top[7:9, 2:18] == 1).all()
    # The touching boxes are still parted by the weighted gap, as in "box" mode.
    assert (top[7:9, 18:22] == BORDER).all() and (whole[7:9, 18:22] == BORDER).all()
    assert ndimage.label(as_classes(np.where(top == IGNORE, 0, top)) == 1)[1] == 2
    # Polygon labels are what they are, whatever the mode.
    np.testing.assert_array_equal(ellipse[16:], whole[16:])
    # The ellipse covers pi/4 of its box: about a fifth of each box is ignored.
    ignored = np.count_nonzero(top == IGNORE) / top.size
    assert 0.15 < ignored < 0.3, ignored


def test_unknown_box_target_mode_is_refused():
    from affine import Affine

    from trainer.data import labelled_target

    with pytest.raises(ValueError, match="box_targets must be one of box, ellipse"):
        labelled_target(
            box_labels(), ["tree"], Affine(0.5, 0, 0, 0, -0.5, 16), (32, 40), 0.5, 2, "x"
        )[0]


def test_labels_train_as_cores_and_the_detector_grows_them_back():
    """Shrink (training) and growth (serving) are inverses: the cores of touching labels are
    apart without any gap, and the objects found on a map of exactly those cores, grown by the
    spec's expand_ratio, have the labels' boxes again."""
    from dataclasses import replace

    from affine import Affine

    from inference.format import DetectorSpec
    from inference.metrics import matched_pairs
    from inference.objects import extract_objects
    from trainer.data import expand_ratio_for, labelled_target

    transform = Affine(0.1, 0, 0, 0, -0.1, 16)  # 0.1 m pixels, 200 x 160 px
    labels = box_labels()
    cores = labelled_target(labels, ["tree"], transform, (160, 200), 0.1, 0, "box", 0.5)[0]
    whole = labelled_target(labels, ["tree"], transform, (160, 200), 0.1, 0, "box")[0]
    assert not (cores == BORDER).any()  # nothing touches: no gap needed
    assert ndimage.label(cores == 1)[1] == 3
    # A box's core keeps (1 + r²) / 2 of a disc's radius: about 0.39 of a square's area.
    share = np.count_nonzero(cores == 1) / np.count_nonzero(as_classes(whole) == 1)
    assert 0.3 < share < 0.5, share

    spec = DetectorSpec(
        model_type="Segmentor",
        class_names=("tree",),
        resolution_m=0.1,
        tile_size=256,
        overlap_px=16,
        min_area_m2=0.5,
        expand_ratio=expand_ratio_for(0.5),
    )
    tree = (cores == 1).astype(np.float32)
    objects = extract_objects(np.stack([1 - tree, tree]), transform, spec)
    assert len(objects) == 3
    found = [obj.geometry.envelope for obj in objects]
    wanted = [label.geometry.envelope for label in labels]
    # The boxes come back to within a pixel (IoU > 0.9); the triangle's acute corners are cut
    # by the mitre limit, so less of it returns, still a match.
    assert sorted(matched_pairs(found, wanted[:2], 0.9), key=lambda p: p[1]) == [(1, 0), (2, 1)]
    assert matched_pairs(found[:1], wanted[2:], 0.5) == [(0, 0)]
    # Without the growth the cores are far too small to match.
    bare = extract_objects(np.stack([1 - tree, tree]), transform, replace(spec, expand_ratio=0))
    assert len(matched_pairs([o.geometry.envelope for o in bare], wanted, 0.5)) == 0
    assert expand_ratio_for(1.0) == 0.0  # whole labels: nothing to grow
