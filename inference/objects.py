"""From a detector's per-class probability raster to objects (polygons with class, score, area).

On-the-fly tiles, training evaluation and bulk export all call `extract_objects`, so the same
pixels always give the same objects. Steps:

1. Per class, mask = the class wins the argmax over all channels (background included, the
   first channel wins ties) and its probability reaches `spec.score_threshold`. 4-connected
   components of the mask are candidate objects (4, like the vectoriser, so one component is
   one polygon).
2. Instance separation, per component, so touching tree crowns come apart but buildings stay
   whole. The Euclidean distance transform of the component peaks at the centre of each crown.
   A peak becomes its own instance only if it lies at least MIN_RADIUS_M inside the object and
   stands *clearly* above the saddle joining it to a higher peak:
   saddle + SPLIT_OFFSET_PX < (1 - SPLIT_RATIO) * (peak + SPLIT_OFFSET_PX), i.e. an h-maxima
   criterion on log(distance + offset). It is computed as dynamics: a watershed (8-connected)
   from every local maximum, then Kruskal over the basins' saddles, highest first, merging the
   basins of peaks that fail the test. (A reconstruction-based h-maxima gave the same instance
   counts on every synthetic case below, but costs more per tile.) Most components
   skip all that: a cheap test shows no peak can pass.
   Why relative, not a fixed depth: a rectangle's distance has one ridge plateau and an L's
   corner is its highest point, so clean buildings never split, but ragged predicted edges dent
   a building's ridge by a pixel or two; a fixed depth that ignores those (2-3 px) also keeps
   small touching crowns together, and plain local maxima (peak_local_max) split slanted
   buildings all along the ridge. On synthetic masks with soft, optionally ragged edges
   (smooth noise up to ~1 px), 0.25 / 2 px kept 20x8, 30x6, 50x10, 12x10 and 40x4 m rectangles
   at 0/17/45 degrees and L, T, U, plus shapes whole in every case at 0.1 m pixels and in all
   but 4 of 260 at 0.3 m (roughest edges, 4 m wide); at 0.5 m thin (4 m) and U shapes with the
   roughest edges sometimes split. Crowns of 1.5-5 m radius usually split when their centres are
   at least 1.8 radii apart at 0.3 m (1.6 at 0.1 m); deeper overlaps stay one object, and at
   0.5 m pixels only large, barely touching crowns separate.
3. Each instance is vectorised (rasterio.features.shapes), repaired if need be (make_valid,
   largest polygon), then simplified by SIMPLIFY_PX with topology preserved. That geometry work
   happens in pixels relative to the object's own corner, after shapely.normalize, so an
   object's polygon depends only on its pixels, not on where it lies in the raster. A detector
   trained on object cores (`spec.expand_ratio` > 0, trainer.data.shrunk) has each polygon
   grown by area * expand_ratio / perimeter, still in those local pixels, before the area
   filter; a box detector's (`spec.output_shape == "box"`) becomes its bounding box. A
   box-regression detector (`spec.box_regression`) skips the outline: each instance's box is
   the median of the boxes its pixels predict, and boxes of a class overlapping by IoU >=
   DUPLICATE_IOU (fragments of one object) keep the one with more pixels. Then it is mapped to
   the CRS with `transform`.

Areas assume a metric CRS: polygon area in CRS units² times `metres_per_unit`² (1 for UTM and
other metre CRSs; Web Mercator callers pass cos(latitude) or get areas inflated by 1/cos²).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage
from shapely import GeometryType
from shapely.geometry import Polygon
from skimage.measure import label as label_regions
from skimage.segmentation import watershed

from inference.format import DetectorSpec

MIN_RADIUS_M = 1.0  # a marker lies this far inside the object: smaller bumps never split off
SPLIT_RATIO = 0.25  # a peak splits off if its saddle is this fraction below it (see above)
SPLIT_OFFSET_PX = 2.0  # damps the ratio for small peaks, where pixel steps weigh most
SIMPLIFY_PX = 0.5  # Douglas-Peucker tolerance: removes the pixel staircase, keeps the shape
DUPLICATE_IOU = 0.5  # regressed boxes of one class overlapping this much are one object
AGREE_IOU = 0.5  # pixels of an instance whose predicted boxes overlap this much agree
SPLIT_SHARE = 0.25  # a second box in an instance needs this share of its pixels behind it
MAX_VOTERS = 128  # pixels per instance that vote on its boxes (evenly spread)

FOUR = ndimage.generate_binary_structure(2, 1)
EIGHT = ndimage.generate_binary_structure(2, 2)


@dataclass(frozen=True)
class DetectedObject:
    """One object: class, mean class probability inside it, polygon in the raster's CRS."""

    class_name: str
    class_index: int  # 0-based, background excluded
    score: float  # mean probability of the class inside the object
    geometry: Polygon  # in the raster's CRS (from `transform`)
    area_m2: float  # polygon area in CRS units² * metres_per_unit² (a metric CRS is assumed)


def extract_objects(
    probabilities: np.ndarray,
    transform: Affine,
    spec: DetectorSpec,
    *,
    keep: Callable[[Polygon], bool] | None = None,
    metres_per_unit: float = 1.0,
) -> list[DetectedObject]:
    """Objects in a (1 + classes, H, W) probability raster, sorted by (class, miny, minx).

    `keep` sees each final polygon (CRS units) after the area filter and before the object is
    built; returning False drops it, e.g. when its representative point lies outside the tile
    or cell the caller owns. `metres_per_unit` converts CRS units to metres (areas, radii).
    """
    raster = _checked(probabilities, spec)
    probs = raster[: spec.class_channels]
    pixel_m = _pixel_size(transform) * metres_per_unit
    pixel_area_m2 = pixel_m**2
    labels, shifts, classes, scores = _instances(
        probs, spec, pixel_m, spec.min_area_m2 / pixel_area_m2
    )
    if not classes:
        return []
    if spec.box_regression:
        distances = raster[spec.class_channels :]
        local, origins, support, owners = _regressed_boxes(labels, shifts, distances)
        classes = [classes[i] for i in owners]
        scores = [scores[i] for i in owners]
        local = _without_duplicates(local, origins, support, classes)
    else:
        local, origins = _local_polygons(labels, len(classes))
        if spec.expand_ratio:
            local = _expanded(local, spec.expand_ratio)
        if spec.output_shape == "box":
            local = _boxes(local)
        origins += shifts  # from the packed canvas to raster pixels
    areas = np.where(shapely.is_geometry(local), shapely.area(local) * pixel_area_m2, -np.inf)
    large = np.flatnonzero(areas >= spec.min_area_m2)
    geometries = _to_crs(local[large], origins[large], transform)
    objects = []
    for index, geometry in zip(large.tolist(), geometries, strict=True):
        if keep is not None and not keep(geometry):
            continue
        class_index = classes[index]
        name = spec.class_names[class_index]
        area = float(areas[index])
        objects.append(DetectedObject(name, class_index, scores[index], geometry, area))
    objects.sort(key=_order)
    return objects


def _checked(probabilities: np.ndarray, spec: DetectorSpec) -> np.ndarray:
    probs = np.asarray(probabilities)
    classes = len(spec.class_names)
    if probs.ndim != 3 or probs.shape[0] != spec.channels:
        boxes = " + 4 box distances" if spec.box_regression else ""
        raise ValueError(
            f"probabilities must be (1 + {classes} classes{boxes}, H, W), not {probs.shape}"
        )
    return probs.astype(np.float32, copy=False)


def _pixel_size(transform: Affine) -> float:
    """Side of a square pixel of the same area, CRS units (rotated grids included)."""
    return float(abs(transform.a * transform.e - transform.b * transform.d)) ** 0.5


def _winner(probs: np.ndarray) -> np.ndarray:
    """Per-pixel argmax channel, first channel winning ties; faster than np.argmax(axis=0)."""
    best = probs[0].copy()
    winner = np.zeros(best.shape, dtype=np.min_scalar_type(len(probs) - 1))
    for channel in range(1, len(probs)):
        better = probs[channel] > best
        winner[better] = channel
        np.maximum(best, probs[channel], out=best)
    return winner


def _instances(
    probs: np.ndarray, spec: DetectorSpec, pixel_m: float, min_pixels: float
) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
    """Instances, labelled 1..n on a canvas packing every component's crop (see
    `_packed_canvas`); per label, the (column, row) shift from canvas to raster pixels; and
    per label, the class index and score (mean class probability)."""
    components = _components(probs, spec, min_pixels)
    canvas, corners = _packed_canvas([mask for _, _, mask in components])
    distance = ndimage.distance_transform_edt(canvas)
    tops = (distance == ndimage.maximum_filter(distance, size=3)) & canvas
    labels = np.zeros(canvas.shape, dtype=np.int32)
    shifts: list[tuple[int, int]] = []
    classes: list[int] = []
    scores: list[float] = []
    min_radius_px = max(MIN_RADIUS_M / pixel_m, 2.0)
    for (channel, box, mask), (row, col) in zip(components, corners, strict=True):
        slot = np.s_[row : row + mask.shape[0] + 2, col : col + mask.shape[1] + 2]
        parts, count = _split(mask, distance[slot], tops[slot], min_radius_px)
        inside = parts > 0
        labels[slot][1:-1, 1:-1][inside] = parts[inside] + len(classes)
        sums = np.bincount(parts[inside], probs[channel][box][inside], minlength=count + 1)
        sizes = np.bincount(parts[inside], minlength=count + 1)
        shifts.extend([(box[1].start - col - 1, box[0].start - row - 1)] * count)
        classes.extend([channel - 1] * count)
        scores.extend((sums[1:] / sizes[1:]).tolist())
    return labels, np.array(shifts, dtype=np.float64).reshape(-1, 2), classes, scores


def _components(
    probs: np.ndarray, spec: DetectorSpec, min_pixels: float
) -> list[tuple[int, tuple[slice, slice], np.ndarray]]:
    """(channel, bounding box, mask within the box) of each 4-connected component per class.

    Simplifying by SIMPLIFY_PX moves edges by under a pixel, so a component of n pixels ends up
    under 2n + 2 px²: smaller ones cannot reach min_pixels and are dropped here.
    """
    winner = _winner(probs)
    skip_below = (min_pixels - 2.0) / 2.0
    found = []
    for channel in range(1, len(probs)):
        mask = (winner == channel) & (probs[channel] >= spec.score_threshold)
        components, _ = ndimage.label(mask, structure=FOUR)
        for number, box in enumerate(ndimage.find_objects(components), start=1):
            component = components[box] == number
            if np.count_nonzero(component) >= skip_below:
                found.append((channel, box, component))
    return found


def _packed_canvas(masks: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All masks, each ringed by one background pixel, packed on one canvas; the top-left
    corner of each ringed slot.

    One distance transform and one vectorisation over the canvas replace one call per crown
    (whose overhead dominated) and a pass over the whole raster. The distance is exact per
    mask: any pixel outside a slot lies farther than the ring pixel straight towards it, so
    each crop edge (and the raster edge) counts as background, whatever lies beside it. And
    GDAL traces each label's outline from that label's pixels alone.
    """
    if not masks:
        return np.zeros((1, 1), dtype=bool), []
    shapes = [(m.shape[0] + 2, m.shape[1] + 2) for m in masks]
    corners, size = _shelf_pack(shapes)
    canvas = np.zeros(size, dtype=bool)
    for mask, (row, col) in zip(masks, corners, strict=True):
        canvas[row + 1 : row + 1 + mask.shape[0], col + 1 : col + 1 + mask.shape[1]] = mask
    return canvas, corners


def _shelf_pack(shapes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Top-left corners placing (height, width) boxes on shelves, tallest first; canvas size."""
    width = max(max(w for _, w in shapes), int(np.sqrt(sum(h * w for h, w in shapes))) + 1)
    corners = [(0, 0)] * len(shapes)
    row = col = shelf = 0
    for index in sorted(range(len(shapes)), key=lambda i: (-shapes[i][0], i)):
        height, box_width = shapes[index]
        if col + box_width > width:
            row, col, shelf = row + shelf, 0, 0
        corners[index] = (row, col)
        col += box_width
        shelf = max(shelf, height)
    return corners, (row + shelf, width)


def _split(
    component: np.ndarray, distance: np.ndarray, tops: np.ndarray, min_radius_px: float
) -> tuple[np.ndarray, int]:
    """The instances of one component: its crop labelled 1..n (0 outside), and n.

    `distance` and `tops` are padded by one pixel all round."""
    whole = (component.astype(np.int32), 1)
    big = tops & (distance >= min_radius_px)
    if np.count_nonzero(big) <= 1 or _linked(big, distance):
        return whole
    padded = distance > 0
    candidates, count = ndimage.label(tops, structure=EIGHT)
    peaks = np.zeros(count + 1)
    peaks[candidates[tops]] = distance[tops]  # candidates are flat
    basins = watershed(-distance, candidates, mask=padded, connectivity=2)
    groups = _instance_of_basin(basins, peaks, distance, min_radius_px)
    instances = int(groups.max())
    if instances <= 1:
        return whole
    parts = groups[basins]
    if label_regions(parts, background=0, connectivity=1).max() > instances:
        # a part joined only diagonally would vectorise as two polygons: flood 4-connected
        parts = watershed(-distance, groups[candidates], mask=padded, connectivity=1)
    return parts[1:-1, 1:-1].astype(np.int32), instances


def _linked(big: np.ndarray, distance: np.ndarray) -> bool:
    """A cheap, sufficient test that no peak stands clear of a higher one (most objects).

    `big` holds the groups of pixels no lower than their 8 neighbours that reach the minimum
    radius (each group is flat; each regional maximum is one). If all of them are connected
    through pixels above the split level of the second highest, none is significant.
    """
    groups, count = ndimage.label(big, structure=EIGHT)
    if count <= 1:
        return True
    peaks = np.zeros(count + 1)
    peaks[groups[big]] = distance[big]
    second = np.sort(peaks[1:])[-2]
    linked, _ = ndimage.label(distance >= _split_level(second), structure=EIGHT)
    ids = linked[big]
    return bool((ids == ids[0]).all())


def _instance_of_basin(
    basins: np.ndarray, peaks: np.ndarray, distance: np.ndarray, min_radius_px: float
) -> np.ndarray:
    """Map basin label -> instance 1..n: basins of insignificant peaks join a neighbour.

    Kruskal over the 8-adjacency of the basins (one per local maximum), highest saddle first:
    when two flooded regions meet, the one with the lower peak ends there, and unless that
    peak reaches min_radius_px and stands clearly above the saddle, its basins join the basin
    it meets. These are the dynamics behind the h-maxima criterion of the module doc, computed
    on the few basins instead of reconstructing every pixel.
    """
    count = len(peaks) - 1
    flood = list(range(count + 1))  # union-find of the regions flooded so far
    group = list(range(count + 1))  # union-find of the basins forming one instance
    summit = list(range(count + 1))  # basin holding each flooded region's highest peak
    for saddle, a, b in _saddles(basins, distance):
        ra, rb = _find(flood, a), _find(flood, b)
        if ra == rb:
            continue
        if (peaks[summit[ra]], -summit[ra]) < (peaks[summit[rb]], -summit[rb]):
            ra, rb, a, b = rb, ra, b, a  # ra holds the higher peak, a is on its side
        low = summit[rb]
        if peaks[low] < min_radius_px or saddle >= _split_level(peaks[low]):
            group[_find(group, low)] = _find(group, a)
        flood[rb] = ra
    roots = np.array([_find(group, basin) for basin in range(count + 1)])
    _, numbered = np.unique(roots[1:], return_inverse=True)
    return np.concatenate([[0], numbered + 1]).astype(np.int32)


def _saddles(basins: np.ndarray, distance: np.ndarray) -> list[tuple[float, int, int]]:
    """(saddle distance, basin, basin) per 8-adjacent pair, highest first (ties by labels)."""
    size = int(basins.max()) + 1
    best = np.full(size * size, -1.0)
    for first, second in (
        (np.s_[:, :-1], np.s_[:, 1:]),
        (np.s_[:-1, :], np.s_[1:, :]),
        (np.s_[:-1, :-1], np.s_[1:, 1:]),
        (np.s_[:-1, 1:], np.s_[1:, :-1]),
    ):
        a, b = basins[first], basins[second]
        border = (a != b) & (a > 0) & (b > 0)
        a, b = a[border], b[border]
        level = np.minimum(distance[first][border], distance[second][border])
        np.maximum.at(best, np.minimum(a, b) * size + np.maximum(a, b), level)
    pairs = np.flatnonzero(best >= 0)
    pairs = pairs[np.argsort(-best[pairs], kind="stable")]
    return [(float(best[p]), int(p // size), int(p % size)) for p in pairs]


def _split_level(peak: float) -> float:
    """The distance a saddle must stay below for `peak` to stand on its own (see module doc).

    Distances are square roots of integers, so exact ties occur (peak 6, saddle 4); the small
    tolerance makes them merge whatever the rounding.
    """
    return (1.0 - SPLIT_RATIO) * (peak + SPLIT_OFFSET_PX) - SPLIT_OFFSET_PX - 1e-9


def _find(parent: list[int], item: int) -> int:
    while parent[item] != item:
        parent[item] = parent[parent[item]]
        item = parent[item]
    return item


def _local_polygons(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per label 1..count: a valid, normalised, simplified polygon in pixels relative to its
    own corner (None if nothing is left), and that corner (pixel column, row)."""
    polygons = _pixel_polygons(labels, count)
    present = np.flatnonzero(shapely.is_geometry(polygons))
    origins = np.zeros((count, 2))
    origins[present] = shapely.bounds(polygons[present])[:, :2]
    local = _translated(polygons[present], -origins[present])
    local = shapely.simplify(shapely.normalize(local), SIMPLIFY_PX, preserve_topology=True)
    polygons[present] = np.where(shapely.is_empty(local), None, local)
    return polygons, origins


def _expanded(polygons: np.ndarray, ratio: float) -> np.ndarray:
    """Each polygon grown by area * ratio / perimeter (the inverse of the shrink the detector
    was trained with, trainer.data), mitred so rectangles keep their corners."""
    present = np.flatnonzero(shapely.is_geometry(polygons))
    if not len(present):
        return polygons
    found = polygons[present]
    offsets = shapely.area(found) * ratio / np.maximum(shapely.length(found), 1e-9)
    grown = shapely.buffer(found, offsets, join_style="mitre", mitre_limit=2.0)
    out = polygons.copy()
    out[present] = grown
    return out


def _boxes(polygons: np.ndarray) -> np.ndarray:
    """Each polygon's bounding box in the raster's pixel grid (a box detector's output)."""
    present = np.flatnonzero(shapely.is_geometry(polygons))
    out = polygons.copy()
    out[present] = shapely.envelope(polygons[present])
    return out


def _regressed_boxes(
    labels: np.ndarray, shifts: np.ndarray, distances: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """The boxes the pixels of each instance (labels 1..n) agree on. Each pixel predicts the
    edges of its object's box (distances from its centre, FCOS's encoding); pixels whose boxes
    agree (`_agreeing_groups`) give one box, each edge the median of theirs, so a fragment of a
    crown still gives the whole crown's box and two crowns merged in the mask give two boxes.
    Returns the boxes relative to their own whole-pixel corner (so, as for outlines, an object
    depends only on its pixels), those corners (column, row) in raster pixels, the pixels behind
    each box, and the instance (0-based) each box came from."""
    rows, cols = np.nonzero(labels)
    index = labels[rows, cols] - 1
    raster_rows = rows + shifts[index, 1].astype(np.int64)
    raster_cols = cols + shifts[index, 0].astype(np.int64)
    top, left, bottom, right = distances[:, raster_rows, raster_cols].astype(np.float64)
    centre_rows, centre_cols = raster_rows + 0.5, raster_cols + 0.5
    edges = np.stack(
        [centre_cols - left, centre_rows - top, centre_cols + right, centre_rows + bottom], axis=1
    )  # (pixels, 4): left, top, right, bottom
    order = np.argsort(index, kind="stable")
    sizes = np.bincount(index, minlength=len(shifts))
    bounds, support, owners = [], [], []
    for number, members in enumerate(np.split(order, np.cumsum(sizes)[:-1])):
        for group in _agreeing_groups(edges[members]):
            bounds.append(np.median(edges[members][group], axis=0))
            support.append(round(len(group) * len(members) / min(len(members), MAX_VOTERS)))
            owners.append(number)
    bounds_array = np.asarray(bounds).reshape(-1, 4)
    origins = np.floor(bounds_array[:, :2])
    relative = bounds_array - np.tile(origins, 2)
    local = shapely.box(*relative.T) if len(relative) else np.empty(0, dtype=object)
    proper = (relative[:, 2] > relative[:, 0]) & (relative[:, 3] > relative[:, 1])
    local = np.where(proper, local, None)
    return local, origins, np.asarray(support), owners


def _agreeing_groups(boxes: np.ndarray) -> list[np.ndarray]:
    """Groups (indexes into `boxes`, (n, 4)) of pixel boxes that agree (IoU >= AGREE_IOU).
    Most instances are one object: when all but SPLIT_SHARE of the boxes agree with their
    median box, those are the one group. Otherwise the box most others agree with seeds a group
    of those, again among the rest, while a seed has at least SPLIT_SHARE of the pixels behind
    it (the first group always stands). At most MAX_VOTERS pixels, evenly spread, vote."""
    count = len(boxes)
    voters = np.linspace(0, count - 1, min(count, MAX_VOTERS)).round().astype(np.int64)
    sample = boxes[voters]
    with_median = _iou(sample, np.median(sample, axis=0)[None, :])[:, 0] >= AGREE_IOU
    if with_median.mean() >= 1.0 - SPLIT_SHARE:
        return [voters[with_median]]
    agree = _iou(sample, sample) >= AGREE_IOU
    remaining = np.ones(len(sample), bool)
    groups: list[np.ndarray] = []
    while remaining.any():
        votes = (agree & remaining[None, :]).sum(axis=1) * remaining
        seed = int(np.argmax(votes))
        if groups and votes[seed] < SPLIT_SHARE * len(sample):
            break
        members = agree[seed] & remaining
        groups.append(voters[members])
        remaining &= ~members
    return groups


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4) with every box in `b` (m, 4): (n, m)."""
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    overlap = np.maximum(width, 0.0) * np.maximum(height, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return overlap / np.maximum(area_a[:, None] + area_b[None, :] - overlap, 1e-12)


def _without_duplicates(
    boxes: np.ndarray, origins: np.ndarray, support: np.ndarray, classes: list[int]
) -> np.ndarray:
    """Boxes of one class that overlap another by IoU >= DUPLICATE_IOU are one object found
    twice (fragments of a crown agree on its box): the one with more pixels behind it stays."""
    present = np.flatnonzero(shapely.is_geometry(boxes))
    if len(present) < 2:
        return boxes
    placed = _translated(boxes[present], origins[present])
    tree = shapely.STRtree(placed)
    left, right = tree.query(placed, predicate="intersects")
    pairs = left < right
    left, right = left[pairs], right[pairs]
    same = np.asarray(classes)[present[left]] == np.asarray(classes)[present[right]]
    left, right = left[same], right[same]
    overlap = shapely.area(shapely.intersection(placed[left], placed[right]))
    union = shapely.area(placed[left]) + shapely.area(placed[right]) - overlap
    duplicate = overlap >= DUPLICATE_IOU * union
    strength = support[present]
    rivals: dict[int, list[int]] = {}
    for i, j in zip(left[duplicate].tolist(), right[duplicate].tolist(), strict=True):
        rivals.setdefault(i, []).append(j)
        rivals.setdefault(j, []).append(i)
    out = boxes.copy()
    dropped: set[int] = set()
    # Greedy, strongest first (ties: the first found), as non-maximum suppression does.
    for item in sorted(rivals, key=lambda k: (-strength[k], k)):
        if item in dropped:
            continue
        dropped.update(k for k in rivals[item] if (strength[k], -k) < (strength[item], -item))
    for item in dropped:
        out[present[item]] = None
    return out


def _pixel_polygons(labels: np.ndarray, count: int) -> np.ndarray:
    """Polygon of each label 1..count in pixel coordinates (object array, index = label - 1).

    One GDAL pass over the packed canvas; the rings go to shapely in one vectorised call.
    """
    rings: list[np.ndarray] = []
    ring_ends: list[int] = [0]
    polygon_ends: list[int] = [0]
    values: list[int] = []
    for geojson, value in rasterio.features.shapes(labels, mask=labels > 0, connectivity=4):
        for ring in geojson["coordinates"]:
            rings.append(np.asarray(ring, dtype=np.float64))
            ring_ends.append(ring_ends[-1] + len(ring))
        polygon_ends.append(len(ring_ends) - 1)
        values.append(int(value) - 1)
    polygons = np.full(count, None, dtype=object)
    if not values:
        return polygons
    offsets = (np.asarray(ring_ends), np.asarray(polygon_ends))
    parts = shapely.from_ragged_array(GeometryType.POLYGON, np.concatenate(rings), offsets)
    index = np.asarray(values)
    if np.unique(index).size == index.size:  # the usual case: one polygon per label
        polygons[index] = parts
    else:
        for label in np.unique(index):
            polygons[label] = _largest(shapely.union_all(parts[index == label]))
    invalid = np.flatnonzero(shapely.is_geometry(polygons) & ~shapely.is_valid(polygons))
    for label in invalid:  # e.g. a hole touching the outline at a corner
        polygons[label] = _largest(shapely.make_valid(polygons[label]))
    return polygons


def _largest(geometry: shapely.Geometry) -> Polygon | None:
    """The largest polygon in a (multi)polygon or collection; the first of equals."""
    polygons = _polygons(geometry)
    return max(polygons, key=lambda p: p.area) if polygons else None


def _polygons(geometry: shapely.Geometry) -> list[Polygon]:
    if isinstance(geometry, Polygon):
        return [] if geometry.is_empty else [geometry]
    return [p for part in getattr(geometry, "geoms", ()) for p in _polygons(part)]


def _translated(geometries: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each geometry shifted by its own (dx, dy); exact for the integer pixel coordinates."""
    coords, owner = shapely.get_coordinates(geometries, return_index=True)
    return shapely.set_coordinates(geometries.copy(), coords + offsets[owner])


def _to_crs(local: np.ndarray, origins: np.ndarray, transform: Affine) -> np.ndarray:
    """Polygons in pixels relative to `origins` (column, row) to the raster's CRS."""
    coords, owner = shapely.get_coordinates(local, return_index=True)
    col = coords[:, 0] + origins[owner, 0]
    row = coords[:, 1] + origins[owner, 1]
    x = transform.a * col + transform.b * row + transform.c
    y = transform.d * col + transform.e * row + transform.f
    return shapely.set_coordinates(local.copy(), np.column_stack([x, y]))


def _order(obj: DetectedObject) -> tuple[int, float, float, float, float]:
    minx, miny, maxx, maxy = obj.geometry.bounds
    return obj.class_index, miny, minx, maxy, maxx
