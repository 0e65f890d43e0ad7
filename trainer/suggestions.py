"""Where to label next: places on the image, the size of a typical training area, where labels
would teach the trained detector most, ranked, each with its reason.

Candidates are the cells of a grid of training-area-sized squares over each image, minus those
already labelled. A sample of them (`max_candidates`, spread evenly) is looked at through the
detector, each through one window at its centre, seen as is and mirrored:

- `uncertain`: share of pixels whose object probability sits near the threshold (0.3-0.7);
- `unstable`: mean disagreement between the plain and the mirrored view (a model that has learnt
  the object answers the same; one that has not, does not);
- `unfamiliar`: how far the window's colours and texture are from every training area's;
- `unusual_sizes`: share of the objects found whose area is far from the labelled objects'.

Each signal is ranked among the candidates (0..1); the score is mostly the strongest rank (one
extreme signal is reason enough), the mean of the others breaking ties; the reason names the
strongest. One window and its mirror per candidate keeps a whole 8192 x 8192 px image well
under a minute on two CPU cores, inside or right after the training job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from pyproj import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping

from inference.objects import extract_objects
from inference.reading import read_region
from inference.session import Detector
from trainer.annotations import Annotations
from trainer.data import ImageSource, pixel_size_for

MAX_CANDIDATES = 64  # looked at per training, over all images
SUGGESTIONS = 10  # returned, best first
NEAR_THRESHOLD = (0.3, 0.7)
SIGNALS = ("uncertain", "unstable", "unfamiliar", "unusual_sizes")
_HISTOGRAM_BINS = 8


@dataclass(frozen=True)
class Candidate:
    image_id: str
    geometry: shapely.Polygon  # image CRS: a training-area-sized square
    window: tuple[float, float, float, float]  # image CRS bounds of the core looked at


@dataclass(frozen=True)
class Look:
    """What the detector made of one candidate's window."""

    uncertain: float
    unstable: float
    appearance: np.ndarray  # colour and texture features, for `unfamiliar`
    unusual_sizes: float
    objects: int


def suggest(
    detector: Detector,
    images: dict[str, ImageSource],
    annotations: dict[str, Annotations],
    *,
    max_candidates: int = MAX_CANDIDATES,
    count: int = SUGGESTIONS,
    seed: int = 0,
) -> dict:
    """Ranked suggestions as a WGS84 FeatureCollection (rank, score, reason, signals), with the
    candidates looked at and the seconds taken in its `summary`."""
    began = time.perf_counter()
    spec = detector.spec
    side = _typical_side(annotations)
    core_px = spec.tile_size - 2 * spec.overlap_px
    candidates = []
    for image_id, source in images.items():
        if image_id in annotations and side is not None:
            window = core_px * pixel_size_for(source.meta, spec.resolution_m)
            candidates += _candidates(image_id, source, annotations[image_id], side, window)
    rng = np.random.default_rng(seed)
    if len(candidates) > max_candidates:  # an even spread: every k-th, from a random start
        step = len(candidates) / max_candidates
        start = rng.uniform(0, step)
        candidates = [candidates[int(start + i * step)] for i in range(max_candidates)]
    label_areas = _label_areas_m2(images, annotations)
    looks = [_look(detector, images[c.image_id], c.window, label_areas) for c in candidates]
    familiar = [
        _look(detector, images[image_id], window, label_areas).appearance
        for image_id, window in _training_windows(images, annotations, core_px, spec.resolution_m)
    ]
    features = _ranked(candidates, looks, familiar, images, count)
    return {
        "type": "FeatureCollection",
        "features": features,
        "summary": {
            "candidates": len(candidates),
            "seconds": round(time.perf_counter() - began, 2),
            "area_side_m": round(side * _metres_per_unit(next(iter(images.values()))), 1)
            if side
            else None,
        },
    }


# --- candidates --------------------------------------------------------------------------------


def _typical_side(annotations: dict[str, Annotations]) -> float | None:
    """The side of a square as large as the median training area (image CRS units)."""
    areas = [a.geometry.area for labelled in annotations.values() for a in labelled.training]
    return float(np.sqrt(np.median(areas))) if areas else None


def _candidates(
    image_id: str, source: ImageSource, labelled: Annotations, side: float, window: float
) -> list[Candidate]:
    """Grid squares on the image (at most a third of its side) that overlap no accuracy area
    and training areas by at most a tenth, each with the window (at most `window` CRS units a
    side) at its centre that the detector will look through."""
    left, bottom, right, top = source.meta["bounds"]
    side = min(side, (right - left) / 3, (top - bottom) / 3)  # places, not halves of the image
    trained = shapely.union_all([a.geometry for a in labelled.training])
    scored = shapely.union_all([a.geometry for a in labelled.accuracy])
    half = min(side, window) / 2
    out = []
    columns = max(1, int((right - left) / side + 1e-6))  # 3 sides of a third are 3, not 2.999
    rows = max(1, int((top - bottom) / side + 1e-6))
    for row in range(rows):
        for column in range(columns):
            x0, y1 = left + column * side, top - row * side
            square = box(x0, max(bottom, y1 - side), min(right, x0 + side), y1)
            # An accuracy area must never be trained on: a suggestion touching one could not
            # become a training area.
            if square.intersection(scored).area > 1e-3 * square.area:  # not a shared edge
                continue
            if square.intersection(trained).area > 0.1 * square.area:
                continue
            cx, cy = square.centroid.x, square.centroid.y
            out.append(Candidate(image_id, square, (cx - half, cy - half, cx + half, cy + half)))
    return out


def _training_windows(
    images: dict[str, ImageSource],
    annotations: dict[str, Annotations],
    core_px: int,
    resolution_m: float,
) -> list[tuple[str, tuple[float, float, float, float]]]:
    """A window at the centre of each training area (at most 16): what the detector knows."""
    out = []
    for image_id, labelled in annotations.items():
        pixel = pixel_size_for(images[image_id].meta, resolution_m)
        for area in labelled.training:
            left, bottom, right, top = area.geometry.bounds
            half = min(right - left, top - bottom, core_px * pixel) / 2
            cx, cy = (left + right) / 2, (bottom + top) / 2
            out.append((image_id, (cx - half, cy - half, cx + half, cy + half)))
    return out[:16]


# --- looking ---------------------------------------------------------------------------------


def _look(
    detector: Detector,
    source: ImageSource,
    window: tuple[float, float, float, float],
    label_areas: np.ndarray,
) -> Look:
    spec = detector.spec
    pixel = pixel_size_for(source.meta, spec.resolution_m)
    context = spec.overlap_px
    left, bottom, right, top = window
    width = max(16, int(round((right - left) / pixel / 16)) * 16)
    height = max(16, int(round((top - bottom) / pixel / 16)) * 16)
    if detector.fixed_input:
        width = height = spec.tile_size - 2 * context
    pad = context * pixel
    bounds = (
        left - pad,
        top - (height + context) * pixel,
        left + (width + context) * pixel,
        top + pad,
    )
    size = (width + 2 * context, height + 2 * context)
    pixels = read_region(
        source.cog_path,
        CRS.from_wkt(source.meta["crs_wkt"]),
        bounds,
        size,
        spec,
        source.meta["gsd"],
    )
    views = np.stack([pixels, pixels[:, :, ::-1]])
    plain, mirrored = detector.run(np.ascontiguousarray(views))
    core = (slice(None), slice(context, context + height), slice(context, context + width))
    plain, mirrored = plain[core], mirrored[:, :, ::-1][core]
    objectness = 1.0 - plain[0]
    low, high = NEAR_THRESHOLD
    uncertain = float(np.mean((objectness > low) & (objectness < high)))
    classes = slice(1, spec.class_channels)  # object classes; box distances left out
    unstable = float(np.mean(np.abs(plain[classes] - mirrored[classes]).sum(axis=0)))
    transform = from_origin(left, top, pixel, pixel)
    objects = extract_objects(plain, transform, spec, metres_per_unit=_metres_per_unit(source))
    unusual = 0.0
    if objects and len(label_areas):
        small, large = np.percentile(label_areas, 5) / 2, np.percentile(label_areas, 95) * 2
        sizes = np.array([o.area_m2 for o in objects])
        unusual = float(np.mean((sizes < small) | (sizes > large)))
    return Look(uncertain, unstable, _appearance(pixels[core]), unusual, len(objects))


def _appearance(pixels: np.ndarray) -> np.ndarray:
    """Per band: mean, spread, a coarse histogram, and the mean gradient (texture)."""
    features = []
    for band in pixels:
        histogram, _ = np.histogram(band, bins=_HISTOGRAM_BINS, range=(-3, 3))
        gradient = np.abs(np.diff(band, axis=0)).mean() + np.abs(np.diff(band, axis=1)).mean()
        features += [band.mean(), band.std(), gradient, *(histogram / max(1, band.size))]
    return np.asarray(features, np.float64)


def _label_areas_m2(
    images: dict[str, ImageSource], annotations: dict[str, Annotations]
) -> np.ndarray:
    areas = []
    for image_id, labelled in annotations.items():
        metres = _metres_per_unit(images[image_id])
        areas += [
            label.geometry.area * metres**2
            for label in labelled.labels
            if label.geometry.geom_type != "Point"
        ]
    return np.asarray(areas)


def _metres_per_unit(source: ImageSource) -> float:
    return source.meta["gsd"] / source.meta["resolution"][0]


# --- ranking ---------------------------------------------------------------------------------


def _ranked(
    candidates: Sequence[Candidate],
    looks: Sequence[Look],
    familiar: Sequence[np.ndarray],
    images: dict[str, ImageSource],
    count: int,
) -> list[dict]:
    if not candidates:
        return []
    appearance = np.stack([look.appearance for look in looks])
    scale = appearance.std(axis=0) + 1e-6
    known = np.stack(familiar) if familiar else appearance[:0]
    if len(known):
        gaps = np.linalg.norm((appearance[:, None] - known[None]) / scale, axis=2).min(axis=1)
    else:
        gaps = np.zeros(len(looks))
    signals = {
        "uncertain": np.array([look.uncertain for look in looks]),
        "unstable": np.array([look.unstable for look in looks]),
        "unfamiliar": gaps,
        "unusual_sizes": np.array([look.unusual_sizes for look in looks]),
    }
    ranks = {name: _rank(values) for name, values in signals.items()}
    # Each signal flags a different gap in what the model learnt, so one extreme signal is
    # reason enough: the strongest rank counts most, the others break ties.
    stacked = np.stack([ranks[name] for name in SIGNALS])
    score = 0.75 * stacked.max(axis=0) + 0.25 * stacked.mean(axis=0)
    order = np.argsort(-score, kind="stable")[:count]
    typical_gap = float(np.median(gaps)) if len(gaps) else 0.0
    features = []
    for rank, i in enumerate(order, start=1):
        strongest = max(SIGNALS, key=lambda name: (ranks[name][i], signals[name][i]))
        values = {name: round(float(signals[name][i]), 4) for name in SIGNALS}
        candidate = candidates[i]
        crs = images[candidate.image_id].meta["crs_wkt"]
        features.append(
            {
                "type": "Feature",
                "geometry": transform_geom(
                    crs, "EPSG:4326", mapping(candidate.geometry), precision=8
                ),
                "properties": {
                    "rank": rank,
                    "image_id": candidate.image_id,
                    "score": round(float(score[i]), 4),
                    "reason": _reason(strongest, values, typical_gap),
                    "signal": strongest,
                    "signals": values,
                    "objects_seen": looks[i].objects,
                },
            }
        )
    return features


def _rank(values: np.ndarray) -> np.ndarray:
    """Each value's place among the others, 0 (lowest) to 1 (highest); ties share a place."""
    if len(values) < 2:
        return np.ones(len(values))
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # ties: their mean place
        same = values == value
        ranks[same] = ranks[same].mean()
    return ranks / (len(values) - 1)


def _reason(signal: str, values: dict[str, float], typical_gap: float) -> str:
    if signal == "uncertain":
        return (
            f"the detector is unsure here: {100 * values['uncertain']:.0f}% of pixels have "
            "probabilities near the threshold"
        )
    if signal == "unstable":
        return (
            "the detector answers differently when the view is mirrored "
            f"(mean disagreement {values['unstable']:.3f})"
        )
    if signal == "unfamiliar":
        times = values["unfamiliar"] / typical_gap if typical_gap else 1.0
        return f"the imagery here looks unlike every training area ({times:.1f}x the typical gap)"
    return (
        f"{100 * values['unusual_sizes']:.0f}% of the objects found here have sizes unlike the "
        "labelled ones"
    )
