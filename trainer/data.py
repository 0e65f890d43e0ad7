"""Training data from annotations: each training area read once, at the detector's native
resolution, through the reader serving uses (`inference.reading`), with its target raster.

Inside a training area every pixel no label covers is background; outside it, pixels are IGNORE
and teach nothing. By default each label trains as its core (`shrunk`), the ring round it as
background, so touching objects are apart by construction and the detector grows what it finds
back (`expand_ratio_for`). Chips are drawn from the areas at any angle and zoom, mirrored and
re-lit (`trainer.augment`), half of them centred on a labelled object, each class equally often.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from shapely.affinity import scale
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

from inference.format import DetectorSpec
from inference.reading import read_region
from inference.region import snapped_request
from trainer.annotations import Area, Label
from trainer.augment import View, chip_points, random_view, relight, warp
from trainer.loop import IGNORE, TrainConfig
from trainer.targets import BORDER, as_classes, class_target

POINT_RADIUS_M = 1.0  # a count label (a point) trains as a disc this wide
BOX_TARGETS = ("box", "ellipse")  # what a box label trains as (see labelled_target)
AUGMENTS = ("heavy", "light")  # AreaSampler's chip views (TrainConfig.augment)


@dataclass(frozen=True)
class ImageSource:
    """An image as the trainer needs it: a path GDAL opens and the catalogue's description."""

    image_id: str
    cog_path: str
    meta: dict  # bounds, crs_wkt, resolution, gsd, count


@dataclass
class AreaData:
    """One training area: pixels scaled to 0..1, the class target, object centres, and what a
    box-regression head learns from: which label each pixel's target belongs to and each
    label's outline."""

    pixels: np.ndarray  # (bands, H, W) float32 in 0..1 (standardised later)
    target: np.ndarray  # (H, W) uint8; IGNORE outside the area
    centres: np.ndarray  # (K, 3) row, col, class index of the labels
    instances: np.ndarray | None = None  # (H, W) int32: label number (1..n) of the target there
    # Per label number - 1: (P, 2) row, col of the whole label's outline (as `warp` indexes
    # pixels); a box label's is its inscribed ellipse, which keeps the box at any angle.
    outlines: tuple[np.ndarray, ...] = ()


def pixel_size_for(meta: dict, resolution_m: float) -> float:
    """CRS units per pixel at `resolution_m` metres (as the window grid computes it)."""
    return resolution_m * meta["resolution"][0] / meta["gsd"]


def read_area(
    source: ImageSource,
    area: Area,
    labels: Sequence[Label],
    class_names: Sequence[str],
    bands: Sequence[int],
    resolution_m: float,
    margin_px: int = 0,
    gap_radius: int = 0,
    box_targets: str = "box",
    core_ratio: float = 1.0,
) -> AreaData:
    """Read one area (its bounding box on the window lattice, plus `margin_px`) and rasterise
    its labels (touching ones parted, see trainer.targets); pixels outside the area's polygon
    are IGNORE."""
    pixel = pixel_size_for(source.meta, resolution_m)
    left, bottom, right, top = area.geometry.bounds
    pad = margin_px * pixel
    request = snapped_request(
        source.cog_path, source.meta, (left - pad, bottom - pad, right + pad, top + pad), pixel
    )
    raw = DetectorSpec(
        model_type="Segmentor",
        class_names=tuple(class_names),
        resolution_m=resolution_m,
        tile_size=512,
        overlap_px=0,
        input_bands=tuple(bands),
        mean=(0.0,) * len(bands),
        std=(1.0,) * len(bands),
    )
    bounds = (
        request.origin_x,
        request.origin_y - request.height * pixel,
        request.origin_x + request.width * pixel,
        request.origin_y,
    )
    size = (request.width, request.height)
    pixels = read_region(source.cog_path, _crs(source), bounds, size, raw, source.meta["gsd"])
    transform = _transform(request.origin_x, request.origin_y, pixel)
    shape = (request.height, request.width)
    target, instances = labelled_target(
        labels, class_names, transform, shape, resolution_m, gap_radius, box_targets, core_ratio
    )
    inside = rasterize([(area.geometry, 1)], out_shape=shape, transform=transform, dtype="uint8")
    target[inside == 0] = IGNORE
    centres = _centres(labels, class_names, transform, shape)
    outlines = tuple(_outline(label, resolution_m, transform) for label in labels)
    return AreaData(pixels.astype(np.float32), target, centres, instances, outlines)


def labelled_target(
    labels: Sequence[Label],
    class_names: Sequence[str],
    transform,
    shape: tuple[int, int],
    resolution_m: float,
    gap_radius: int = 0,
    box_targets: str = "box",
    core_ratio: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Class per pixel, and the label number (1..n, 0: none) it came from; labels later in the
    list win overlaps; touching labels parted.

    `box_targets` says what a box label teaches: "box", that its whole rectangle is the object;
    "ellipse", that its inscribed ellipse is, its corners being IGNORE (a box drawn round a
    tree crown holds ground in its corners, which would teach that ground next to a crown is
    tree; the ellipse keeps the box's extent, so the prediction's bounding box can still match
    it, and the model decides the corners from what it sees elsewhere)."""
    if box_targets not in BOX_TARGETS:
        known = ", ".join(BOX_TARGETS)
        raise ValueError(f"box_targets must be one of {known}, not {box_targets!r}")
    if not 0.0 < core_ratio <= 1.0:
        raise ValueError(f"core_ratio must be in (0, 1], not {core_ratio}")
    shapes = []
    corners = []
    classes = [0]
    for number, label in enumerate(labels, start=1):
        trained = _trained_shape(label, resolution_m, transform)
        if label.kind == "box" and box_targets == "ellipse":
            corners.append((label.geometry, 1))
            trained = _inscribed_ellipse(label.geometry)
        if core_ratio < 1.0:
            trained = shrunk(trained, core_ratio, pixel=abs(transform.a))
        shapes.append((trained, number))
        classes.append(class_names.index(label.cls) + 1)
    if not shapes:
        return np.zeros(shape, np.uint8), np.zeros(shape, np.int32)
    ids = rasterize(shapes, out_shape=shape, transform=transform, dtype="int32")
    target = class_target(ids, np.asarray(classes, np.uint8), gap_radius)
    if corners:
        boxes = rasterize(corners, out_shape=shape, transform=transform, dtype="uint8") > 0
        target[boxes & (ids == 0)] = IGNORE
    return target, ids


def shrunk(geometry: BaseGeometry, ratio: float, pixel: float) -> BaseGeometry:
    """The core of an object: moved inwards by area * (1 - ratio²) / perimeter (DBNet); an
    object too thin for that keeps at least a pixel-wide core round its representative point."""
    offset = geometry.area * (1.0 - ratio**2) / max(geometry.length, 1e-12)
    core = geometry.buffer(-offset, join_style="mitre")
    if core.is_empty or core.area < pixel * pixel:
        return geometry.representative_point().buffer(pixel)
    return core


def expand_ratio_for(core_ratio: float) -> float:
    """The growth (DetectorSpec.expand_ratio) that gives a disc back the radius `shrunk` took:
    a disc's core has k = (1 + r²) / 2 of its radius; growing by area * e / perimeter adds
    e / 2 of the core's radius, so e = 2 (1 - k) / k."""
    if core_ratio >= 1.0:
        return 0.0
    k = (1.0 + core_ratio**2) / 2.0
    return round(2.0 * (1.0 - k) / k, 6)


def _inscribed_ellipse(rectangle: BaseGeometry) -> BaseGeometry:
    """The ellipse touching the middle of each side of the rectangle's bounding box."""
    left, bottom, right, top = rectangle.bounds
    circle = Point((left + right) / 2, (bottom + top) / 2).buffer(1.0, quad_segs=16)
    return scale(circle, (right - left) / 2, (top - bottom) / 2)


def _outline(label: Label, resolution_m: float, transform) -> np.ndarray:
    """The label's whole outline as (row, col) pixel positions, pixel centres at integers."""
    shape = _trained_shape(label, resolution_m, transform)
    if label.kind == "box":
        shape = _inscribed_ellipse(label.geometry)
    # The hull's box is the shape's box at any angle, with fewer points to turn.
    xs, ys = shapely.get_coordinates(shape.convex_hull).T
    cols, rows = ~transform * (xs, ys)
    return np.stack([np.asarray(rows) - 0.5, np.asarray(cols) - 0.5], axis=1)


def _trained_shape(label: Label, resolution_m: float, transform) -> BaseGeometry:
    if label.geometry.geom_type == "Point":
        units_per_metre = transform.a / resolution_m
        return label.geometry.buffer(POINT_RADIUS_M * units_per_metre)
    return label.geometry


def _centres(labels, class_names, transform, shape) -> np.ndarray:
    inverse = ~transform
    rows = []
    for label in labels:
        point = label.geometry.representative_point()
        col, row = inverse * (point.x, point.y)
        if 0 <= row < shape[0] and 0 <= col < shape[1]:
            rows.append((int(row), int(col), class_names.index(label.cls) + 1))
    return np.array(rows, np.int64).reshape(-1, 3)


def band_stats(areas: Sequence[AreaData]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std over the labelled pixels of every training area."""
    chunks = [a.pixels[:, a.target != IGNORE] for a in areas]
    pixels = np.concatenate(chunks, axis=1).astype(np.float64)
    return pixels.mean(axis=1), np.maximum(pixels.std(axis=1), 1e-3)


def class_weights(areas: Sequence[AreaData], classes: int, power: float) -> torch.Tensor:
    """Inverse-frequency weights, softened by `power`: small objects are a tiny share of pixels."""
    targets = [as_classes(a.target) for a in areas]
    counts = sum(np.bincount(t[t != IGNORE], minlength=classes) for t in targets)
    frequency = np.maximum(counts / max(counts.sum(), 1), 1e-4)
    weights = frequency**-power
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


class AreaSampler:
    """Random training chips from the areas, with geometric and radiometric augmentation."""

    def __init__(
        self, areas: Sequence[AreaData], inputs: Sequence[np.ndarray], config: TrainConfig
    ):
        if config.augment not in AUGMENTS:
            raise ValueError(
                f"augment must be one of {', '.join(AUGMENTS)}, not {config.augment!r}"
            )
        if config.box_head and config.augment != "heavy":
            raise ValueError("a box head learns from heavy augmentation's views (augment='heavy')")
        if config.box_head and any(a.instances is None for a in areas):
            raise ValueError("a box head needs each area's label instances (read_area gives them)")
        self.config = config
        self.areas = list(areas)
        self.raw_inputs = list(inputs)  # unpadded: the heavy sampler's warp pads with IGNORE
        size = config.chip
        # Light chips are crops: areas smaller than a chip are padded with IGNORE, so every
        # chip has the same shape (the heavy sampler needs no copy).
        light = config.augment == "light"
        self.inputs = [_pad_to(x, size, 0.0) for x in inputs] if light else []
        self.targets = [_pad_to(a.target[None], size, IGNORE)[0] for a in areas] if light else []
        self.centres = [a.centres for a in areas]
        # IGNORE outside an area is 255 in the low byte, label 0 in the rest (see heavy_chip).
        self.targets_and_ids = (
            [a.instances.astype(np.int32) * 256 + a.target for a in areas]
            if config.box_head
            else []
        )
        sizes = np.array([a.target.size for a in areas], np.float64)
        self.area_weights = sizes / sizes.sum()  # big areas give more chips

    def chip(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.config.augment == "heavy":
            return self.heavy_chip(rng)
        size = self.config.chip
        index = int(rng.choice(len(self.inputs), p=self.area_weights))
        x_all, y_all, centres = self.inputs[index], self.targets[index], self.centres[index]
        height, width = y_all.shape
        if len(centres) and rng.random() < self.config.object_chips:
            row, col = _object_centre(centres, rng)
            row, col = row - rng.integers(size), col - rng.integers(size)
        else:
            row, col = rng.integers(height - size + 1), rng.integers(width - size + 1)
        row, col = int(np.clip(row, 0, height - size)), int(np.clip(col, 0, width - size))
        x = x_all[:, row : row + size, col : col + size]
        y = y_all[row : row + size, col : col + size]
        turns = int(rng.integers(4))
        x, y = np.rot90(x, turns, axes=(1, 2)), np.rot90(y, turns)
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        # Brightness, contrast and a little noise: other dates and sensors look different.
        gain = rng.uniform(0.8, 1.2)
        bias = rng.uniform(-0.25, 0.25)
        x = x * gain + bias + rng.normal(0.0, 0.05, size=x.shape).astype(np.float32)
        return x.astype(np.float32), y

    def heavy_chip(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A chip centred on an object (class balanced) or anywhere in an area, seen at any
        angle and zoom, mirrored and re-lit (trainer.augment)."""
        config = self.config
        index = int(rng.choice(len(self.areas), p=self.area_weights))
        area = self.areas[index]
        centres = area.centres
        height, width = area.target.shape
        if len(centres) and rng.random() < config.object_chips:
            row, col = _object_centre(centres, rng)
            reach = config.chip / 2  # the object lands anywhere in the chip
            row, col = row + rng.uniform(-reach, reach), col + rng.uniform(-reach, reach)
        else:
            row, col = rng.uniform(0, height), rng.uniform(0, width)
        view = random_view(row, col, rng, config.zoom, any_angle=True)
        if not config.box_head:
            x, y = warp(self.raw_inputs[index], area.target, view, config.chip)
            return relight(x, rng, config.relight), y
        # Target and label numbers in one raster: one nearest-neighbour warp gives both.
        x, both = warp(self.raw_inputs[index], self.targets_and_ids[index], view, config.chip)
        y, ids = (both % 256).astype(np.uint8), both // 256
        distances = chip_box_distances(area, y, ids, view, config.chip)
        return relight(x, rng, config.relight), y, distances

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """Standardised chips (N, bands, H, W), class targets (N, H, W), and with a box head
        the box distances to learn (N, 4, H, W), NaN where there are none."""
        chips = [self.chip(rng) for _ in range(self.config.batch)]
        stacked = [np.ascontiguousarray(np.stack(part)) for part in zip(*chips, strict=True)]
        stacked[1] = stacked[1].astype(np.int64)
        return tuple(torch.from_numpy(part) for part in stacked)


def chip_box_distances(
    area: AreaData, target: np.ndarray, ids: np.ndarray, view: View, size: int
) -> np.ndarray:
    """Per chip pixel of a label's core (the chip's target a class there, not BORDER or IGNORE;
    `ids` the chip's label numbers): the distances from its centre to the top, left, bottom and
    right of the label's whole box as the chip sees it (its outline turned with the view, so a
    crown cut by the chip's edge still teaches its whole box); NaN elsewhere."""
    distances = np.full((4, size, size), np.nan, np.float32)
    taught = (ids > 0) & (target != BORDER) & (target != IGNORE)
    rows, cols = np.nonzero(taught)
    if not len(rows):
        return distances
    numbers = ids[rows, cols]
    bounds = np.zeros((int(numbers.max()) + 1, 4))
    for number in np.unique(numbers):
        points = chip_points(area.outlines[number - 1], view, size)
        bounds[number] = (*points.min(axis=0), *points.max(axis=0))  # top, left, bottom, right
    top, left, bottom, right = bounds[numbers].T
    # At least a quarter pixel: a core pixel on the outline still lies inside its box.
    distances[:, rows, cols] = np.maximum(
        np.stack([rows - top, cols - left, bottom - rows, right - cols]), 0.25
    )
    return distances


def _object_centre(centres: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """(row, col) of a labelled object: a class drawn uniformly, then one of its objects."""
    cls = rng.choice(np.unique(centres[:, 2]))
    chosen = centres[centres[:, 2] == cls]
    row, col, _ = chosen[rng.integers(len(chosen))]
    return row, col


def standardise(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((pixels - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def _pad_to(array: np.ndarray, size: int, value) -> np.ndarray:
    _, height, width = array.shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if not pad_h and not pad_w:
        return array
    return np.pad(array, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=value)


def _crs(source: ImageSource) -> CRS:
    return CRS.from_wkt(source.meta["crs_wkt"])


def _transform(x0: float, y0: float, pixel: float) -> Affine:
    return Affine(pixel, 0, x0, 0, -pixel, y0)
