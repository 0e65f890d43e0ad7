"""Object-level scores: predictions matched one-to-one to labelled objects at IoU >= a threshold.

Shared by tests, training reports and benchmarks, so every figure of "F1" means the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shapely import STRtree
from shapely.geometry.base import BaseGeometry


@dataclass(frozen=True)
class MatchScores:
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 0.0

    @property
    def recall(self) -> float:
        labelled = self.true_positives + self.false_negatives
        return self.true_positives / labelled if labelled else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "tp": self.true_positives,
            "fp": self.false_positives,
            "fn": self.false_negatives,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
        }


def match_objects(
    predicted: Sequence[BaseGeometry], truth: Sequence[BaseGeometry], min_iou: float = 0.5
) -> MatchScores:
    """Greedy one-to-one matching, best IoU first (the usual object-detection protocol)."""
    matched = len(matched_pairs(predicted, truth, min_iou))
    return MatchScores(matched, len(predicted) - matched, len(truth) - matched)


def matched_pairs(
    predicted: Sequence[BaseGeometry], truth: Sequence[BaseGeometry], min_iou: float = 0.5
) -> list[tuple[int, int]]:
    """(predicted index, truth index) of each one-to-one match at IoU >= `min_iou`, best first.

    A Point in `truth` (a count label) matches a prediction that contains it, scored as IoU 1.
    """
    if not predicted or not truth:
        return []
    tree = STRtree(list(truth))
    candidates = []
    for p_index, shape in enumerate(predicted):
        for t_index in tree.query(shape, predicate="intersects"):
            other = truth[t_index]
            if other.geom_type == "Point":
                candidates.append((1.0, p_index, int(t_index)))
                continue
            union = shape.union(other).area
            iou = shape.intersection(other).area / union if union else 0.0
            if iou >= min_iou:
                candidates.append((iou, p_index, int(t_index)))
    used_p: set[int] = set()
    used_t: set[int] = set()
    pairs = []
    for _iou, p_index, t_index in sorted(candidates, reverse=True):
        if p_index not in used_p and t_index not in used_t:
            used_p.add(p_index)
            used_t.add(t_index)
            pairs.append((p_index, t_index))
    return pairs
