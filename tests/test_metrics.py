"""Object matching: one-to-one at IoU >= 0.5, best matches first."""

from __future__ import annotations

import pytest
from shapely.geometry import box

from inference.metrics import match_objects


def test_matching_counts_each_object_once():
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
    predicted = [box(1, 0, 10, 10), box(0, 0, 9, 10), box(50, 50, 60, 60)]
    scores = match_objects(predicted, truth)
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (1, 2, 1)
    assert scores.f1 == pytest.approx(0.4)


def test_low_overlap_is_not_a_match():
    scores = match_objects([box(0, 0, 10, 10)], [box(6, 0, 16, 10)], min_iou=0.5)
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (0, 1, 1)
    assert scores.precision == scores.recall == scores.f1 == 0.0


def test_empty_inputs():
    assert match_objects([], [box(0, 0, 1, 1)]).false_negatives == 1
    assert match_objects([box(0, 0, 1, 1)], []).false_positives == 1
