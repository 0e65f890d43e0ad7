"""Training targets from labelled instances: a class per pixel, touching instances of one class
parted by a 1-px background line, so the model learns to leave a valley between touching
objects that the watershed downstream can split (counting needs separate objects)."""

from __future__ import annotations

import numpy as np


def touching_edges(ids: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Pixels of an instance that touch (8-connected) a lower-numbered instance of its class.

    Clearing only the higher-numbered side leaves a 1-px line, yet no pixel of one instance
    still touches another, so the two come apart as separate connected components.
    """
    padded = np.pad(ids, 1)
    height, width = ids.shape
    edge = np.zeros(ids.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            other = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            edge |= (other > 0) & (other < ids) & (classes[other] == classes[ids])
    return edge


def class_target(ids: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class index per pixel from instance ids (0 = none) and each id's class."""
    return np.where(touching_edges(ids, classes), 0, classes[ids]).astype(np.uint8)
