"""Training targets from labelled instances: a class per pixel, with the pixels where touching
instances of one class meet marked BORDER. The trainer learns BORDER as background (weighted
by TrainConfig.border_weight), so the model leaves a valley between touching objects that the
instance separation downstream can split (counting needs separate objects)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BORDER = 254  # background between touching objects of a class; IGNORE is 255


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


def class_gap_radius(ids: np.ndarray, classes: np.ndarray, radius: int) -> dict[int, int]:
    """Gap radius per class: `radius`, but at most a third of the class's typical half-width
    (the median of its instances' shorter box side / 2) and at least 1, so a 2 px cut does
    not eat a car 6 px wide while crowns 30 px wide get a clear valley."""
    boxes = ndimage.find_objects(ids)
    half_widths: dict[int, list[float]] = {}
    for number, box in enumerate(boxes, start=1):
        if box is not None:
            shorter = min(box[0].stop - box[0].start, box[1].stop - box[1].start)
            half_widths.setdefault(int(classes[number]), []).append(shorter / 2)
    return {
        cls: int(np.clip(np.median(widths) // 3, 1, radius)) for cls, widths in half_widths.items()
    }


def contact_zone(ids: np.ndarray, classes: np.ndarray, radius: int) -> np.ndarray:
    """Pixels of an instance within its class's gap radius (square neighbourhood, see
    class_gap_radius) of another instance of its class: clearing them leaves a gap about
    2 * radius wide, from both sides alike."""
    zone = np.zeros(ids.shape, bool)
    instance_classes = classes[ids]
    beyond = int(ids.max()) + 1  # stands for 'no instance' in the minimum (dtype max overflows)
    radii = class_gap_radius(ids, classes, radius)
    for cls in np.unique(instance_classes[ids > 0]):
        size = 2 * radii[int(cls)] + 1
        own = np.where(instance_classes == cls, ids, 0)
        largest = ndimage.maximum_filter(own, size=size)
        smallest = ndimage.minimum_filter(np.where(own > 0, own, beyond), size=size)
        zone |= (own > 0) & ((largest != own) | (smallest != own))
    return zone


def class_target(ids: np.ndarray, classes: np.ndarray, gap_radius: int = 0) -> np.ndarray:
    """Class index per pixel from instance ids (0 = none) and each id's class; BORDER where
    touching instances meet (a 1-px line for gap_radius 0, else the contact zone)."""
    ids = ids.astype(np.int64, copy=False)
    border = contact_zone(ids, classes, gap_radius) if gap_radius else touching_edges(ids, classes)
    return np.where(border, BORDER, classes[ids]).astype(np.uint8)


def as_classes(target: np.ndarray) -> np.ndarray:
    """The target with BORDER read as background (IGNORE kept)."""
    return np.where(target == BORDER, 0, target).astype(target.dtype)
