"""Training targets part touching objects of a class, and the loss weights those gaps."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from trainer.loop import IGNORE, weighted_cross_entropy
from trainer.targets import BORDER, as_classes, class_target

CLASSES = np.array([0, 1, 1, 2], np.uint8)  # ids 1, 2: class 1 (trees); id 3: class 2 (cars)


def touching_pair() -> np.ndarray:
    """Two trees side by side (ids 1, 2) and a car (id 3) touching tree 2."""
    ids = np.zeros((20, 30), np.int32)
    ids[5:15, 2:12] = 1
    ids[5:15, 12:22] = 2
    ids[5:15, 22:27] = 3
    return ids


def test_gap_radius_parts_touching_objects_of_a_class_only():
    ids = touching_pair()
    for radius, width in ((0, 1), (1, 2), (2, 4)):
        target = class_target(ids, CLASSES, radius)
        gap_columns = np.unique(np.nonzero(target == BORDER)[1])
        assert len(gap_columns) == width, radius
        assert gap_columns.min() >= 12 - width and gap_columns.max() < 12 + width
        # The trees come apart; the car touching tree 2 is another class and keeps its pixels.
        _, trees = ndimage.label(as_classes(target) == 1)
        assert trees == 2
        assert (target[ids == 3] == 2).all()


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
