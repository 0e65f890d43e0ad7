"""A deterministic synthetic aerial scene: a tiled RGB GeoTIFF plus GeoJSON truth of its objects.

The planner lays out roads, fields, ponds, buildings (with drives and car parks), cars and trees
as vector shapes in the scene CRS, all drawn from one seeded generator in one fixed order. The
renderer then paints the image one row of GeoTIFF blocks at a time, burning only the shapes that
touch that strip, so memory stays bounded however large the scene. Trees, buildings and cars are
the objects a detector should find; everything else is background.
"""

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely import STRtree
from shapely.geometry import LineString, Polygon, box, mapping
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient
from shapely.ops import substring

ProgressCallback = Callable[[float], None]
Colour = tuple[float, float, float]
CLASSES = ("tree", "building", "car")

# Unit vector (east, north) along which shadows fall: north-west, from a late-morning sun in the
# south-east. Surfaces that face the opposite way are the lit ones.
_SHADOW_DIR = np.array([-0.6, 0.8])
_LIGHT_DIR = -_SHADOW_DIR
_SHADOW_PER_METRE = 0.5  # shadow length per metre of height: a sun about 63 degrees up
_SHADOW_TINT = np.array([0.42, 0.45, 0.55], np.float32)  # shade is lit by blue sky only

_GRASS = np.array([72, 102, 50], np.float32)
_DRY_GRASS = np.array([128, 126, 80], np.float32)
_SOIL = np.array([126, 112, 86], np.float32)
_BANK = np.array([98, 96, 70], np.float32)
_WATER = np.array([36, 56, 60], np.float32)
_ASPHALT = np.array([86, 87, 90], np.float32)
_CONCRETE = np.array([132, 130, 126], np.float32)
_PAINT = np.array([212, 212, 204], np.float32)
_GLASS = np.array([34, 40, 48], np.float32)

_CROPS: tuple[Colour, ...] = (
    (88, 118, 52),  # young cereal
    (170, 158, 98),  # ripe wheat
    (112, 96, 76),  # ploughed
    (124, 142, 70),  # maize
    (150, 140, 92),  # stubble
)
_PITCHED_ROOFS: tuple[Colour, ...] = (
    (152, 76, 56),  # terracotta
    (124, 60, 50),  # red-brown
    (74, 74, 77),  # slate
    (118, 116, 112),  # concrete tile
    (106, 84, 66),  # brown
    (54, 55, 58),  # anthracite
)
_FLAT_ROOFS: tuple[Colour, ...] = ((176, 176, 170), (142, 142, 140), (84, 84, 86), (200, 200, 194))
_CAR_PAINTS: tuple[Colour, ...] = (
    (226, 226, 226),
    (30, 30, 33),
    (170, 172, 176),
    (108, 110, 114),
    (32, 46, 92),
    (150, 28, 28),
    (44, 84, 150),
    (46, 80, 52),
    (196, 182, 150),
)
_CAR_PAINT_WEIGHTS = np.array([24, 20, 18, 12, 7, 7, 6, 3, 3], float) / 100
_FOLIAGE: tuple[Colour, ...] = ((46, 74, 32), (58, 86, 38), (38, 62, 34), (70, 92, 42))


@dataclass(frozen=True)
class SceneSpec:
    """What to generate. Densities are per km² so that small test scenes keep every class."""

    width: int = 8192
    height: int = 8192
    gsd: float = 0.3  # metres per pixel
    seed: int = 0
    crs: str = "EPSG:32633"  # UTM 33N
    origin: tuple[float, float] = (500000.0, 5400000.0)  # x of left edge, y of top edge
    block: int = 512  # tile size of the written GeoTIFF
    trees_per_km2: float = 300.0
    buildings_per_km2: float = 45.0
    cars_per_km2: float = 90.0
    road_spacing_m: float = 800.0

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise ValueError("a scene needs at least 64x64 pixels")
        if self.gsd <= 0:
            raise ValueError("gsd must be positive")
        if self.seed < 0:
            raise ValueError("seed must be >= 0 (numpy seeds are non-negative)")
        if self.block <= 0 or self.block % 16:
            raise ValueError("block must be a positive multiple of 16 (GeoTIFF tile rule)")

    @property
    def transform(self) -> Affine:
        return from_origin(self.origin[0], self.origin[1], self.gsd, self.gsd)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Left, bottom, right, top in the scene CRS."""
        left, top = self.origin
        return (left, top - self.height * self.gsd, left + self.width * self.gsd, top)

    @property
    def area_km2(self) -> float:
        return self.width * self.height * self.gsd**2 / 1e6


@dataclass(frozen=True)
class SceneObject:
    """One ground-truth object; the polygon is in the scene CRS (metres)."""

    id: int
    cls: str  # "tree" | "building" | "car"
    polygon: Polygon


@dataclass(frozen=True)
class SceneSummary:
    counts: dict[str, int]  # per class
    width: int
    height: int
    crs: str
    bounds: tuple[float, float, float, float]  # scene CRS: left, bottom, right, top
    lonlat_bounds: tuple[float, float, float, float]  # WGS84: west, south, east, north


@dataclass(frozen=True)
class _Road:
    line: LineString
    width: float
    polygon: Polygon
    shade: float  # stretches were resurfaced at different times


@dataclass(frozen=True)
class _Field:
    polygon: Polygon
    angle: float  # direction of the crop rows, radians anticlockwise from east
    period: float  # row spacing, metres
    colour: Colour


@dataclass(frozen=True)
class _Wing:
    """One rectangular roof; L-shaped buildings have two."""

    polygon: Polygon
    centre: tuple[float, float]
    angle: float  # ridge direction
    half_length: float  # along the ridge
    half_width: float  # across the ridge
    colour: Colour
    flat: bool


@dataclass(frozen=True)
class _Car:
    polygon: Polygon
    centre: tuple[float, float]
    angle: float  # heading: the windscreen is at the front
    half_length: float
    half_width: float
    colour: Colour


@dataclass(frozen=True)
class _Tree:
    polygon: Polygon
    centre: tuple[float, float]
    radius: float
    colour: Colour


@dataclass(frozen=True)
class _Layout:
    roads: list[_Road]
    markings: list[BaseGeometry]
    paved: list[Polygon]
    paint: list[Polygon]
    fields: list[_Field]
    ponds: list[Polygon]
    wings: list[_Wing]
    cars: list[_Car]
    trees: list[_Tree]
    shadows: list[BaseGeometry]
    objects: list[SceneObject]


def _rect(cx: float, cy: float, length: float, width: float, angle: float) -> Polygon:
    """Rectangle centred on (cx, cy) with `length` along `angle` (radians from east)."""
    c, s = math.cos(angle), math.sin(angle)
    corners = ((-1, -1), (1, -1), (1, 1), (-1, 1))
    half_l, half_w = length / 2, width / 2
    return Polygon(
        [
            (cx + c * u * half_l - s * v * half_w, cy + s * u * half_l + c * v * half_w)
            for u, v in corners
        ]
    )


def _blob(
    cx: float, cy: float, radius: float, rng: np.random.Generator, wobble: float, vertices: int
) -> Polygon:
    """An irregular round outline: a circle bent by a few random low harmonics."""
    theta = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False)
    scale = np.ones(vertices)
    for k in (2, 3, 5):
        scale += rng.uniform(0, wobble) / k * 2 * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    scale += rng.uniform(-wobble, wobble, vertices) / 3
    r = radius * np.clip(scale, 0.5, None)
    return Polygon(np.column_stack([cx + r * np.cos(theta), cy + r * np.sin(theta)]))


def _shadow(polygon: Polygon, height: float) -> BaseGeometry:
    """Ground a solid object of this outline and height darkens; never the object itself."""
    dx, dy = _SHADOW_DIR * height * _SHADOW_PER_METRE
    sweep = shapely.convex_hull(shapely.union(polygon, shapely.affinity.translate(polygon, dx, dy)))
    return sweep.difference(polygon)


def _tree_shadow(crown: Polygon, radius: float, height: float) -> BaseGeometry:
    """A crown's shadow joined to the tree by a narrow trunk shadow, not a solid sweep."""
    dx, dy = _SHADOW_DIR * height * _SHADOW_PER_METRE
    crown_shadow = shapely.affinity.translate(crown, dx, dy)
    trunk = shapely.LineString([crown.centroid, crown_shadow.centroid]).buffer(0.2 * radius)
    return shapely.union(crown_shadow, trunk).difference(crown)


def _point_along(line: LineString, s: float) -> tuple[float, float, float]:
    """Point at arc length `s` on a line and the line's direction there."""
    a, b = line.interpolate(max(s - 2.0, 0.0)), line.interpolate(min(s + 2.0, line.length))
    p = line.interpolate(s)
    return p.x, p.y, math.atan2(b.y - a.y, b.x - a.x)


def _pick(rng: np.random.Generator, options: Sequence[Colour], jitter: float) -> Colour:
    """One of `options`, nudged so no two objects share an exact colour. Mostly brightness:
    independent channel jitter would tint greys."""
    base = np.asarray(options[rng.integers(len(options))], float)
    nudged = base * (1 + rng.uniform(-jitter, jitter) / 100) + rng.uniform(-1, 1, 3) * jitter / 4
    return tuple(float(v) for v in np.clip(nudged, 0, 255))


class _GridIndex:
    """Buckets shapes by bounding box to answer 'does this collide with anything placed yet?'."""

    def __init__(self, cell: float = 40.0) -> None:
        self._cell = cell
        self._shapes: list[BaseGeometry] = []
        self._buckets: dict[tuple[int, int], list[int]] = {}

    def _keys(self, bounds: Sequence[float], margin: float) -> Iterator[tuple[int, int]]:
        xmin, ymin, xmax, ymax = (
            math.floor((bounds[0] - margin) / self._cell),
            math.floor((bounds[1] - margin) / self._cell),
            math.floor((bounds[2] + margin) / self._cell),
            math.floor((bounds[3] + margin) / self._cell),
        )
        for i in range(xmin, xmax + 1):
            for j in range(ymin, ymax + 1):
                yield i, j

    def add(self, shape: BaseGeometry) -> None:
        self._shapes.append(shape)
        for key in self._keys(shape.bounds, 0.0):
            self._buckets.setdefault(key, []).append(len(self._shapes) - 1)

    def collides(self, shape: BaseGeometry, margin: float) -> bool:
        checked: set[int] = set()
        for key in self._keys(shape.bounds, margin):
            for i in self._buckets.get(key, ()):
                if i not in checked:
                    checked.add(i)
                    if shapely.dwithin(shape, self._shapes[i], margin):
                        return True
        return False


class _CrownIndex:
    """Tree centres and radii; crowns may touch and overlap a little but never swallow another."""

    def __init__(self, cell: float = 16.0) -> None:
        self._cell = cell
        self._buckets: dict[tuple[int, int], list[tuple[float, float, float]]] = {}

    def _key(self, x: float, y: float) -> tuple[int, int]:
        return math.floor(x / self._cell), math.floor(y / self._cell)

    def add(self, x: float, y: float, r: float) -> None:
        self._buckets.setdefault(self._key(x, y), []).append((x, y, r))

    def crowded(self, x: float, y: float, r: float, overlap: float = 0.8) -> bool:
        i, j = self._key(x, y)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                for ox, oy, orr in self._buckets.get((i + di, j + dj), ()):
                    if math.hypot(x - ox, y - oy) < overlap * (r + orr):
                        return True
        return False


class _ValueNoise:
    """Smooth random field in scene metres. Every lattice row has its own seed, so any strip can
    be sampled on its own and neighbouring strips join without a seam."""

    def __init__(self, spec: SceneSpec, key: int, cell: float) -> None:
        left, _, right, top = spec.bounds
        self._seed, self._key, self._cell = spec.seed, key, cell
        self._x0, self._y0 = left - 2 * cell, top + 2 * cell
        self._ncols = int((right - left) / cell) + 6

    def _lattice(self, first: int, last: int) -> np.ndarray:
        rows = [
            np.random.default_rng((self._seed, self._key, i)).random(self._ncols, np.float32)
            for i in range(first, last + 1)
        ]
        return np.stack(rows) * 2 - 1

    def grid(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Noise at every (y, x) pair of the two axes, shape (len(ys), len(xs)), in [-1, 1]."""
        fy = (self._y0 - ys) / self._cell
        iy = np.floor(fy).astype(np.int64)
        ty = _fade(fy - iy).astype(np.float32)[:, None]
        fx = (xs - self._x0) / self._cell
        ix = np.floor(fx).astype(np.int64)
        tx = _fade(fx - ix).astype(np.float32)
        lattice = self._lattice(int(iy.min()), int(iy.max()) + 1)
        iy -= iy.min()
        rows = lattice[iy] + (lattice[iy + 1] - lattice[iy]) * ty
        left = np.take(rows, ix, axis=1)
        return left + (np.take(rows, ix + 1, axis=1) - left) * tx


class _Fbm:
    """Value noise summed over octaves, coarse ones weighing most; roughly in [-1, 1]."""

    def __init__(self, spec: SceneSpec, key: int, cells: Sequence[float]) -> None:
        self._octaves = [_ValueNoise(spec, key * 16 + i, cell) for i, cell in enumerate(cells)]
        weights = 0.55 ** np.arange(len(cells))
        self._weights = (weights / weights.sum()).astype(np.float32)

    def grid(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        total = self._octaves[0].grid(ys, xs) * self._weights[0]
        for octave, weight in zip(self._octaves[1:], self._weights[1:], strict=True):
            total += octave.grid(ys, xs) * weight
        return total


def _fade(t: np.ndarray) -> np.ndarray:
    """Smoothstep, so value noise has no creases along lattice lines."""
    return t * t * (3 - 2 * t)


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    return _fade(np.clip((x - lo) / (hi - lo), 0, 1))


@dataclass(frozen=True)
class _Frame:
    """Coordinates beside a road: `across` along the road, `out` away from its edge."""

    origin: tuple[float, float]
    angle: float  # road direction
    side: float  # +1 left of the road's direction, -1 right
    edge: float  # half the road width

    @property
    def normal_angle(self) -> float:
        return self.angle + self.side * np.pi / 2

    def point(self, across: float, out: float) -> tuple[float, float]:
        return self.point_from(*self.origin, across, self.edge + out, self.angle)

    def point_from(
        self, x: float, y: float, across: float, out: float, angle: float
    ) -> tuple[float, float]:
        c, s = math.cos(angle), math.sin(angle)
        return x + c * across - s * self.side * out, y + s * across + c * self.side * out

    def clip_from_road(self, shape: Polygon, skip: float) -> BaseGeometry:
        """`shape` without the strip within `skip` metres of the road edge."""
        keep = _rect(*self.point(0.0, skip + 50.0), 400.0, 100.0, self.angle)
        return shape.intersection(keep)


class _Planner:
    """Places everything in one fixed order, each step avoiding what earlier steps placed."""

    def __init__(self, spec: SceneSpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        left, bottom, right, top = spec.bounds
        self.inner = box(left + 1, bottom + 1, right - 1, top - 1)
        self.urban_map, self.urban_cell = self._urban_map(spec)
        self.blocked = _GridIndex()
        self.parked = _GridIndex()
        self.crowns = _CrownIndex()
        self.roads: list[_Road] = []
        self.markings: list[BaseGeometry] = []
        self.paved: list[Polygon] = []
        self.paint: list[Polygon] = []
        self.fields: list[_Field] = []
        self.ponds: list[Polygon] = []
        self.wings: list[_Wing] = []
        self.buildings: list[Polygon] = []
        self.cars: list[_Car] = []
        self.trees: list[_Tree] = []
        self.shadows: list[BaseGeometry] = []

    @staticmethod
    def _urban_map(spec: SceneSpec) -> tuple[np.ndarray, float]:
        """How built-up each 25 m cell is, 0..1: villages cluster instead of spreading evenly."""
        cell = 25.0
        left, bottom, right, top = spec.bounds
        ys = np.arange(top - cell / 2, bottom, -cell)
        xs = np.arange(left + cell / 2, right, cell)
        noise = _Fbm(spec, 1, (900.0, 300.0)).grid(ys, xs)
        return np.clip(0.5 + 1.6 * noise, 0, 1), cell

    def urbanness(self, x: float, y: float) -> float:
        left, _, _, top = self.spec.bounds
        rows, cols = self.urban_map.shape
        i = min(max(int((top - y) / self.urban_cell), 0), rows - 1)
        j = min(max(int((x - left) / self.urban_cell), 0), cols - 1)
        return float(self.urban_map[i, j])

    def random_point(self, margin: float) -> tuple[float, float]:
        left, bottom, right, top = self.spec.bounds
        x = self.rng.uniform(left + margin, right - margin)
        y = self.rng.uniform(bottom + margin, top - margin)
        return float(x), float(y)

    def random_road(self) -> _Road:
        lengths = np.array([road.line.length for road in self.roads])
        return self.roads[self.rng.choice(len(self.roads), p=lengths / lengths.sum())]

    # Roads ---------------------------------------------------------------------------------

    def plan_roads(self) -> None:
        """A loose grid of gently curving roads, one every `road_spacing_m` or so each way."""
        left, bottom, right, top = self.spec.bounds
        for vertical in (False, True):
            span = (right - left) if vertical else (top - bottom)
            count = max(1, round(span / self.spec.road_spacing_m))
            offsets = (np.arange(count) + self.rng.uniform(0.3, 0.7, count)) * span / count
            for offset in offsets:
                line = self._road_line(vertical, float(offset))
                width = float(self.rng.uniform(6.0, 8.0))
                polygon = line.buffer(width / 2, cap_style="flat")
                shade = float(self.rng.uniform(0.85, 1.15))
                self.roads.append(_Road(line, width, polygon, shade))
                self.blocked.add(polygon)

    def _road_line(self, vertical: bool, offset: float) -> LineString:
        left, bottom, right, top = self.spec.bounds
        length = (top - bottom) if vertical else (right - left)
        t = np.arange(-60.0, length + 60.0, 8.0)
        slope = self.rng.uniform(-0.12, 0.12)
        amplitude = self.rng.uniform(0, 35)
        wavelength = self.rng.uniform(700, 2000)
        phase = self.rng.uniform(0, 2 * np.pi)
        wave = amplitude * np.sin(t / wavelength * 2 * np.pi + phase)
        across = offset + slope * (t - length / 2) + wave
        if vertical:
            return LineString(np.column_stack([left + across, bottom + t]))
        return LineString(np.column_stack([left + t, bottom + across]))

    def plan_markings(self) -> None:
        """Solid edge lines and a dashed centre line, broken where another road crosses."""
        for i, road in enumerate(self.roads):
            crossing = shapely.union_all([r.polygon for j, r in enumerate(self.roads) if j != i])
            crossing = crossing.buffer(2.0)
            edges = [road.line.offset_curve(side * (road.width / 2 - 0.5)) for side in (-1, 1)]
            dashes = [substring(road.line, s, s + 3.0) for s in np.arange(0, road.line.length, 9.0)]
            for line in edges + dashes:
                mark = line.buffer(0.22, cap_style="flat").difference(crossing)
                if not mark.is_empty:
                    self.markings.append(mark)

    def road_angle_near(self, x: float, y: float) -> float:
        point = shapely.Point(x, y)
        road = min(self.roads, key=lambda r: r.line.distance(point))
        return _point_along(road.line, road.line.project(point))[2]

    # Land ----------------------------------------------------------------------------------

    def plan_ponds(self) -> None:
        wanted = int(self.rng.poisson(0.35 * self.spec.area_km2))
        for _ in range(wanted * 20):
            if len(self.ponds) >= wanted:
                return
            x, y = self.random_point(60)
            pond = _blob(x, y, float(self.rng.uniform(20, 55)), self.rng, 0.25, 48)
            if not self.blocked.collides(pond, 12.0):
                self.ponds.append(pond)
                self.blocked.add(pond.buffer(3.0))

    def plan_fields(self) -> None:
        """Rectangular crop fields in the open country, aligned with the nearest road."""
        wanted = round(16 * self.spec.area_km2)
        for _ in range(wanted * 15):
            if len(self.fields) >= wanted:
                return
            x, y = self.random_point(-60)
            if self.rng.random() > (1 - self.urbanness(x, y)) ** 2:
                continue
            angle = self.road_angle_near(x, y) + float(self.rng.normal(0, 0.03))
            length, width = self.rng.uniform(100, 340), self.rng.uniform(70, 230)
            polygon = _rect(x, y, length, width, angle)
            if self.blocked.collides(polygon, 6.0):
                continue
            rows = angle + (np.pi / 2 if self.rng.random() < 0.3 else 0.0)
            period = float(self.rng.uniform(1.6, 3.2))
            self.fields.append(_Field(polygon, rows, period, _pick(self.rng, _CROPS, 8)))
            self.blocked.add(polygon)

    # Buildings -----------------------------------------------------------------------------

    def plan_buildings(self) -> None:
        """Houses and larger flat-roofed halls facing the roads, mostly in the villages."""
        wanted = max(4, round(self.spec.buildings_per_km2 * self.spec.area_km2))
        for _ in range(wanted * 80):
            if len(self.buildings) >= wanted:
                return
            road = self.random_road()
            x, y, angle = _point_along(road.line, float(self.rng.uniform(0, road.line.length)))
            side = float(self.rng.choice((-1.0, 1.0)))
            hall = bool(self.rng.random() < 0.22)
            if self.rng.random() < self.urbanness(x, y) ** 1.5 + 0.03:
                self._try_building(road, (x, y), angle, side, hall)

    def _try_building(
        self, road: _Road, at: tuple[float, float], angle: float, side: float, hall: bool
    ) -> None:
        rng = self.rng
        if hall:
            frontage, depth, yard = rng.uniform(15, 25), rng.uniform(12, 22), rng.uniform(13, 20)
        else:
            frontage, depth, yard = rng.uniform(8, 15), rng.uniform(8, 12.5), rng.uniform(5, 11)
        frame = _Frame(at, angle, side, road.width / 2)
        heading = angle + float(rng.normal(0, 0.03))
        cx, cy = frame.point(0.0, yard + depth / 2)
        wings = (
            [_flat_wing(cx, cy, frontage, depth, heading, _pick(rng, _FLAT_ROOFS, 10))]
            if hall
            else self._house_wings(frame, cx, cy, frontage, depth, heading)
        )
        outline = shapely.union_all([w.polygon for w in wings])
        apron = _rect(*frame.point(0.0, yard / 2), frontage + 6, yard, angle) if hall else None
        drive_at = float(rng.choice((-1.0, 1.0))) * (frontage / 2 - 2.0)
        if apron is None:
            apron = _rect(*frame.point(drive_at, yard / 2), yard, 3.0, angle + np.pi / 2)
        # Check the apron minus its first metres, which are meant to touch the road.
        reach = frame.clip_from_road(apron, 2.0)
        whole = shapely.union(outline, apron)
        if not self.inner.contains(whole) or self.blocked.collides(outline, 2.0):
            return
        if self.blocked.collides(reach, 1.5):
            return
        height = float(rng.uniform(5, 10) if hall else rng.uniform(6, 9))
        self._commit_building(wings, outline, apron, height)
        if hall:
            self._park_cars(frame, frontage, yard)
        elif yard >= 7.0 and rng.random() < 0.55:
            self._car_on_drive(frame, drive_at, yard)

    def _house_wings(
        self, frame: _Frame, cx: float, cy: float, frontage: float, depth: float, heading: float
    ) -> list[_Wing]:
        """A gabled house; three in ten get a back wing that makes an L."""
        rng = self.rng
        colour = _pick(rng, _PITCHED_ROOFS, 10)
        main = _gable_wing(cx, cy, frontage, depth, heading, colour)
        if rng.random() > 0.3:
            return [main]
        wing_width = frontage * float(rng.uniform(0.4, 0.55))
        reach = depth / 2 + float(rng.uniform(4, min(9, 25 - depth)))
        end = float(rng.choice((-1.0, 1.0))) * (frontage - wing_width) / 2
        bx, by = frame.point_from(cx, cy, end, reach / 2, heading)
        back = _gable_wing(bx, by, wing_width, reach, heading, colour)
        return [back, main]

    def _commit_building(
        self, wings: list[_Wing], outline: Polygon, apron: Polygon, height: float
    ) -> None:
        self.wings.extend(wings)
        self.buildings.append(outline)
        self.paved.append(apron)
        self.shadows.append(
            shapely.union_all([_shadow(w.polygon, height) for w in wings]).difference(outline)
        )
        self.blocked.add(outline)
        self.blocked.add(apron)

    def _park_cars(self, frame: _Frame, frontage: float, yard: float) -> None:
        """A row of marked bays along the hall's front, a second by the road if there is room."""
        bays = int((frontage + 4) // 2.6)
        rows = [yard - 3.0] + ([3.5] if yard >= 16 else [])
        for depth_at in rows:
            for k in range(bays + 1):
                across = (k - bays / 2) * 2.6
                self.paint.append(_rect(*frame.point(across, depth_at), 0.3, 4.6, frame.angle))
            for k in range(bays):
                if self.rng.random() < 0.65:
                    across = (k + 0.5 - bays / 2) * 2.6 + float(self.rng.uniform(-0.2, 0.2))
                    facing = frame.normal_angle + (np.pi if self.rng.random() < 0.5 else 0.0)
                    self._add_car(*frame.point(across, depth_at), facing, check=False)

    def _car_on_drive(self, frame: _Frame, drive_at: float, yard: float) -> None:
        length = 4.6
        depth_at = float(self.rng.uniform(1.0 + length / 2, yard - 0.8 - length / 2))
        facing = frame.normal_angle + (np.pi if self.rng.random() < 0.5 else 0.0)
        self._add_car(*frame.point(drive_at, depth_at), facing, check=False)

    # Cars ----------------------------------------------------------------------------------

    def _add_car(self, x: float, y: float, heading: float, check: bool) -> bool:
        rng = self.rng
        length, width = float(rng.uniform(4.1, 4.9)), float(rng.uniform(1.75, 1.95))
        heading += float(rng.normal(0, 0.03))
        polygon = _rect(x, y, length, width, heading)
        if not self.inner.contains(polygon):
            return False
        if check and self.parked.collides(polygon, 1.0):
            return False
        paint = _CAR_PAINTS[int(rng.choice(len(_CAR_PAINTS), p=_CAR_PAINT_WEIGHTS))]
        colour = _pick(rng, [paint], 8)
        self.cars.append(_Car(polygon, (x, y), heading, length / 2, width / 2, colour))
        self.parked.add(polygon)
        self.shadows.append(_shadow(polygon, 1.5))
        return True

    def plan_traffic(self) -> None:
        """Cars driving on the right in small platoons, topping the count up to the density."""
        target = max(3, round(self.spec.cars_per_km2 * self.spec.area_km2))
        wanted = max(target - len(self.cars), round(0.15 * target), 2)
        placed = 0
        for _ in range(wanted * 20):
            if placed >= wanted:
                return
            road = self.random_road()
            start = float(self.rng.uniform(0, road.line.length))
            lane = float(self.rng.choice((-1.0, 1.0)))
            x, y, _ = _point_along(road.line, start)
            if self.rng.random() > 0.3 + 0.7 * self.urbanness(x, y):
                continue
            gaps = np.cumsum(self.rng.uniform(7, 18, int(self.rng.integers(1, 5))))
            for gap in gaps:
                placed += self._car_in_lane(road, start - lane * float(gap), lane)

    def _car_in_lane(self, road: _Road, s: float, lane: float) -> bool:
        x, y, angle = _point_along(road.line, s)
        offset = -lane * road.width / 4  # to the right of the direction of travel
        x, y = x - math.sin(angle) * offset, y + math.cos(angle) * offset
        heading = angle if lane > 0 else angle + np.pi
        return self._add_car(x, y, heading, check=True)

    # Trees ---------------------------------------------------------------------------------

    def plan_trees(self) -> None:
        """Hedgerows along fields, groves of touching crowns, then single and garden trees."""
        wanted = max(12, round(self.spec.trees_per_km2 * self.spec.area_km2))
        self._plan_hedgerows(int(0.35 * wanted))
        self._plan_groves(int(0.85 * wanted))
        self._plan_single_trees(wanted)

    def _radius(self) -> float:
        return 2.0 + 4.0 * float(self.rng.beta(2.0, 3.0))

    def _try_tree(self, x: float, y: float, radius: float) -> bool:
        if self.crowns.crowded(x, y, radius):
            return False
        crown = _blob(x, y, radius, self.rng, 0.12, 20)
        if not self.inner.contains(crown) or self.blocked.collides(crown, 0.5):
            return False
        if self.parked.collides(crown, 0.5):
            return False
        colour = _pick(self.rng, _FOLIAGE, 9)
        self.trees.append(_Tree(crown, (x, y), radius, colour))
        self.crowns.add(x, y, radius)
        height = 1.8 * radius + float(self.rng.uniform(2, 5))
        self.shadows.append(_tree_shadow(crown, radius, height))
        return True

    def _plan_hedgerows(self, limit: int) -> None:
        for fld in self.fields:
            if self.rng.random() > 0.45:
                continue
            corners = np.asarray(fld.polygon.exterior.coords)[:4]
            for k in self.rng.choice(4, size=int(self.rng.integers(1, 3)), replace=False):
                if len(self.trees) >= limit:
                    return
                self._plant_row(corners[k], corners[(k + 1) % 4], limit)

    def _plant_row(self, a: np.ndarray, b: np.ndarray, limit: int) -> None:
        """Trees outside the edge a->b of a field (anticlockwise ring), crowns touching."""
        length = float(np.hypot(*(b - a)))
        along = (b - a) / length
        outward = np.array([along[1], -along[0]])
        s, previous = 0.0, 0.0
        while len(self.trees) < limit:
            radius = self._radius()
            s += (previous + radius) * float(self.rng.uniform(0.82, 1.0))
            if self.rng.random() < 0.08:
                s += float(self.rng.uniform(5, 30))  # a gap in the hedge
            if s > length:
                return
            x, y = a + along * s + outward * (radius + float(self.rng.uniform(0.8, 2.0)))
            previous = radius if self._try_tree(float(x), float(y), radius) else 0.0

    def _plan_groves(self, limit: int) -> None:
        for _ in range(limit):
            if len(self.trees) >= limit:
                return
            x, y = self.random_point(10)
            size = min(60, int(self.rng.geometric(1 / 12)))
            self._grow_grove(x, y, size, limit)

    def _grow_grove(self, x: float, y: float, size: int, limit: int) -> None:
        """Each new crown touches a random earlier one, so groves are clumps of touching trees."""
        radius = self._radius()
        if not self._try_tree(x, y, radius):
            return
        members = [(x, y, radius)]
        for _ in range(size * 4):
            if len(members) >= size or len(self.trees) >= limit:
                return
            px, py, pr = members[int(self.rng.integers(max(0, len(members) - 6), len(members)))]
            radius = self._radius()
            angle = float(self.rng.uniform(0, 2 * np.pi))
            reach = (pr + radius) * float(self.rng.uniform(0.82, 1.0))
            nx, ny = px + reach * math.cos(angle), py + reach * math.sin(angle)
            if self._try_tree(nx, ny, radius):
                members.append((nx, ny, radius))

    def _plan_single_trees(self, limit: int) -> None:
        for _ in range(limit * 20):
            if len(self.trees) >= limit:
                return
            if self.buildings and self.rng.random() < 0.5:
                home = self.buildings[int(self.rng.integers(len(self.buildings)))].centroid
                angle = float(self.rng.uniform(0, 2 * np.pi))
                reach = float(self.rng.uniform(9, 22))
                x, y = home.x + reach * math.cos(angle), home.y + reach * math.sin(angle)
            else:
                x, y = self.random_point(5)
            self._try_tree(x, y, self._radius())

    def layout(self) -> _Layout:
        objects = [("building", p) for p in self.buildings]
        objects += [("car", c.polygon) for c in self.cars]
        objects += [("tree", t.polygon) for t in self.trees]
        return _Layout(
            roads=self.roads,
            markings=self.markings,
            paved=self.paved,
            paint=self.paint,
            fields=self.fields,
            ponds=self.ponds,
            wings=self.wings,
            cars=self.cars,
            trees=self.trees,
            shadows=[s for s in self.shadows if not s.is_empty],
            objects=[SceneObject(i + 1, cls, p) for i, (cls, p) in enumerate(objects)],
        )


def _gable_wing(
    cx: float, cy: float, frontage: float, depth: float, heading: float, colour: Colour
) -> _Wing:
    """A pitched roof whose ridge runs along the longer side."""
    polygon = _rect(cx, cy, frontage, depth, heading)
    if frontage >= depth:
        return _Wing(polygon, (cx, cy), heading, frontage / 2, depth / 2, colour, False)
    return _Wing(polygon, (cx, cy), heading + np.pi / 2, depth / 2, frontage / 2, colour, False)


def _flat_wing(
    cx: float, cy: float, frontage: float, depth: float, heading: float, colour: Colour
) -> _Wing:
    polygon = _rect(cx, cy, frontage, depth, heading)
    return _Wing(polygon, (cx, cy), heading, frontage / 2, depth / 2, colour, True)


def _plan_layout(spec: SceneSpec) -> _Layout:
    planner = _Planner(spec)
    planner.plan_roads()
    planner.plan_markings()
    planner.plan_ponds()
    planner.plan_fields()
    planner.plan_buildings()
    planner.plan_traffic()
    planner.plan_trees()
    return planner.layout()


def plan_scene(spec: SceneSpec) -> list[SceneObject]:
    """The scene's ground-truth objects; pure and fully determined by `spec`."""
    return _plan_layout(spec).objects


class _Layer:
    """Shapes of one kind, burnt into a strip as 1-based shape numbers (0 = none)."""

    def __init__(self, shapes: Sequence[BaseGeometry]) -> None:
        self._shapes = list(shapes)
        self._tree = STRtree(self._shapes)

    def ids(self, strip: "_Strip") -> np.ndarray:
        hits = np.sort(self._tree.query(strip.box))
        if hits.size == 0:
            return np.zeros(strip.shape, np.int32)
        return rasterize(
            ((self._shapes[i], int(i) + 1) for i in hits),
            out_shape=strip.shape,
            transform=strip.transform,
            fill=0,
            dtype="int32",
        )


@dataclass(frozen=True)
class _Strip:
    """Rows [first, stop) of the scene plus one row of padding each side for the blur."""

    index: int
    first: int
    stop: int
    pad_top: int
    shape: tuple[int, int]
    transform: Affine
    box: Polygon
    ys: np.ndarray  # northing of each row's pixel centres
    xs: np.ndarray  # easting of each column's pixel centres


def _strips(spec: SceneSpec) -> Iterator[_Strip]:
    for index, first in enumerate(range(0, spec.height, spec.block)):
        stop = min(first + spec.block, spec.height)
        top, bottom = max(first - 1, 0), min(stop + 1, spec.height)
        window = Window(0, top, spec.width, bottom - top)
        transform = window_transform(window, spec.transform)
        left, _, right, north = spec.bounds
        rows = np.arange(top, bottom) + 0.5
        yield _Strip(
            index=index,
            first=first,
            stop=stop,
            pad_top=first - top,
            shape=(bottom - top, spec.width),
            transform=transform,
            box=box(left, north - bottom * spec.gsd, right, north - top * spec.gsd),
            ys=north - rows * spec.gsd,
            xs=left + (np.arange(spec.width) + 0.5) * spec.gsd,
        )


def _pixels(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and 0-based shape index of every burnt pixel."""
    r, c = np.nonzero(ids)
    return r, c, ids[r, c] - 1


def _local(
    strip: _Strip, r: np.ndarray, c: np.ndarray, centre: np.ndarray, angle: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from each shape's centre, along and across its `angle`."""
    dx, dy = strip.xs[c] - centre[:, 0], strip.ys[r] - centre[:, 1]
    ca, sa = np.cos(angle), np.sin(angle)
    return dx * ca + dy * sa, dy * ca - dx * sa


class _Renderer:
    """Paints strips: ground, fields, water, roads, cars, shadows, roofs, crowns, in that order."""

    def __init__(self, spec: SceneSpec, layout: _Layout) -> None:
        self.spec = spec
        self.moisture = _Fbm(spec, 2, (320.0, 110.0, 40.0))
        self.soil = _Fbm(spec, 3, (90.0, 30.0))
        self.mottle = _Fbm(spec, 4, (12.0, 4.0))
        self.grain = _ValueNoise(spec, 5, 0.9)
        self.fields = _Layer([f.polygon for f in layout.fields])
        self.field_angle = np.array([f.angle for f in layout.fields])
        self.field_period = np.array([f.period for f in layout.fields])
        self.field_colour = np.array([f.colour for f in layout.fields], np.float32).reshape(-1, 3)
        self.banks = _Layer([p.buffer(3.0) for p in layout.ponds])
        self.ponds = _Layer(layout.ponds)
        self.roads = _Layer([r.polygon for r in layout.roads])
        self.road_shade = np.array([r.shade for r in layout.roads], np.float32)
        self.markings = _Layer(layout.markings)
        self.paved = _Layer(layout.paved)
        self.paint = _Layer(layout.paint)
        self.shadows = _Layer(layout.shadows)
        self.cars = _Layer([c.polygon for c in layout.cars])
        self.car = _arrays(layout.cars, ("centre", "angle", "half_length", "half_width", "colour"))
        self.wings = _Layer([w.polygon for w in layout.wings])
        self.wing = _arrays(
            layout.wings, ("centre", "angle", "half_length", "half_width", "colour", "flat")
        )
        self.trees = _Layer([t.polygon for t in layout.trees])
        self.tree = _arrays(layout.trees, ("centre", "radius", "colour"))

    def render(self, strip: _Strip) -> np.ndarray:
        """The strip as (bands, rows, cols) uint8, without its padding rows."""
        mottle = self.mottle.grid(strip.ys, strip.xs)
        grain = self.grain.grid(strip.ys, strip.xs)
        img = self._ground(strip, mottle, grain)
        self._paint_fields(strip, img, mottle)
        self._paint_water(strip, img, mottle)
        self._paint_roads(strip, img, mottle, grain)
        self._paint_cars(strip, img)
        img[self.shadows.ids(strip) > 0] *= _SHADOW_TINT
        self._paint_roofs(strip, img, grain)
        self._paint_crowns(strip, img, mottle, grain)
        return self._finish(strip, img)

    def _ground(self, strip: _Strip, mottle: np.ndarray, grain: np.ndarray) -> np.ndarray:
        """Grass that dries out and wears to bare soil in broad, soft-edged patches."""
        dryness = np.clip(0.5 - 1.3 * self.moisture.grid(strip.ys, strip.xs), 0, 1)
        img = _GRASS + dryness[..., None] * (_DRY_GRASS - _GRASS)
        bare = _smoothstep(0.3, 0.6, self.soil.grid(strip.ys, strip.xs))
        img += (0.8 * bare)[..., None] * (_SOIL - img)
        img *= (1 + 0.12 * mottle + 0.07 * grain)[..., None]
        return img

    def _paint_fields(self, strip: _Strip, img: np.ndarray, mottle: np.ndarray) -> None:
        """Crops in rows, with a darker tractor tramline every 20 m."""
        r, c, k = _pixels(self.fields.ids(strip))
        angle = self.field_angle[k]
        along = strip.xs[c] * np.cos(angle) + strip.ys[r] * np.sin(angle)
        rows = 1 + 0.14 * np.sin(2 * np.pi * along / self.field_period[k])
        tramline = np.where(np.mod(along, 20.0) < 0.6, 0.8, 1.0)
        shade = (rows * tramline * (1 + 0.1 * mottle[r, c])).astype(np.float32)
        img[r, c] = self.field_colour[k] * shade[:, None]

    def _paint_water(self, strip: _Strip, img: np.ndarray, mottle: np.ndarray) -> None:
        r, c, _ = _pixels(self.banks.ids(strip))
        img[r, c] = _BANK * (1 + 0.1 * mottle[r, c])[:, None]
        r, c, _ = _pixels(self.ponds.ids(strip))
        img[r, c] = _WATER * (1 + 0.05 * mottle[r, c])[:, None]

    def _paint_roads(
        self, strip: _Strip, img: np.ndarray, mottle: np.ndarray, grain: np.ndarray
    ) -> None:
        r, c, k = _pixels(self.roads.ids(strip))
        wear = self.road_shade[k] * (1 + 0.05 * mottle[r, c] + 0.04 * grain[r, c])
        img[r, c] = _ASPHALT * wear[:, None]
        img[self.markings.ids(strip) > 0] = _PAINT
        r, c, _ = _pixels(self.paved.ids(strip))
        img[r, c] = _CONCRETE * (1 + 0.05 * grain[r, c])[:, None]
        img[self.paint.ids(strip) > 0] = _PAINT

    def _paint_cars(self, strip: _Strip, img: np.ndarray) -> None:
        """Body colour with a dark windscreen and rear window and slightly shaded sides."""
        r, c, k = _pixels(self.cars.ids(strip))
        car = {name: values[k] for name, values in self.car.items()}
        along, across = _local(strip, r, c, car["centre"], car["angle"])
        front = along / car["half_length"]
        glass = ((front > 0.18) & (front < 0.6)) | ((front > -0.8) & (front < -0.55))
        side = np.where(np.abs(across) > 0.8 * car["half_width"], 0.8, 1.0).astype(np.float32)
        colour = car["colour"] * side[:, None]
        colour[glass] = _GLASS
        img[r, c] = colour

    def _paint_roofs(self, strip: _Strip, img: np.ndarray, grain: np.ndarray) -> None:
        """Pitched roofs: two halves lit differently, a bright ridge, dark eaves.
        Flat roofs: an even surface inside a pale parapet."""
        r, c, k = _pixels(self.wings.ids(strip))
        wing = {name: values[k] for name, values in self.wing.items()}
        along, across = _local(strip, r, c, wing["centre"], wing["angle"])
        angle = wing["angle"]
        facing = np.sign(across) * (-np.sin(angle) * _LIGHT_DIR[0] + np.cos(angle) * _LIGHT_DIR[1])
        pitched = 1 + 0.28 * facing
        pitched = np.where(np.abs(across) < 0.3, 1.2, pitched)
        pitched = np.where(np.abs(across) > wing["half_width"] - 0.35, pitched * 0.75, pitched)
        edge = np.minimum(wing["half_length"] - np.abs(along), wing["half_width"] - np.abs(across))
        flat = np.where(edge < 0.6, 1.15, 1.0)
        shade = np.where(wing["flat"], flat, pitched) * (1 + 0.05 * grain[r, c])
        img[r, c] = wing["colour"] * shade.astype(np.float32)[:, None]

    def _paint_crowns(
        self, strip: _Strip, img: np.ndarray, mottle: np.ndarray, grain: np.ndarray
    ) -> None:
        """Crowns bright at the sunlit top, dark at the rim, clumpy with foliage."""
        r, c, k = _pixels(self.trees.ids(strip))
        centre, radius = self.tree["centre"][k], self.tree["radius"][k]
        dx, dy = (strip.xs[c] - centre[:, 0]) / radius, (strip.ys[r] - centre[:, 1]) / radius
        lit = dx * _LIGHT_DIR[0] + dy * _LIGHT_DIR[1]
        shade = 1.2 - 0.5 * (dx * dx + dy * dy) + 0.2 * lit
        shade *= 1 + 0.25 * grain[r, c] + 0.06 * mottle[r, c]
        img[r, c] = self.tree["colour"][k] * shade.astype(np.float32)[:, None]

    def _finish(self, strip: _Strip, img: np.ndarray) -> np.ndarray:
        """Lens softness, then sensor noise; drop the padding rows; bands first, uint8."""
        soft = img.copy()
        soft[1:-1] = 0.6 * img[1:-1] + 0.2 * (img[:-2] + img[2:])
        img[:, 1:-1] = 0.6 * soft[:, 1:-1] + 0.2 * (soft[:, :-2] + soft[:, 2:])
        img[:, [0, -1]] = soft[:, [0, -1]]
        rows = slice(strip.pad_top, strip.pad_top + strip.stop - strip.first)
        out = img[rows]
        rng = np.random.default_rng((self.spec.seed, 99, strip.index))
        out += rng.standard_normal(out.shape, np.float32) * 2.5
        pixels = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _arrays(items: Sequence[object], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-shape attributes as arrays, so a strip can look them up for all its pixels at once."""
    arrays = {}
    for name in names:
        values = np.array([getattr(item, name) for item in items])
        if name in ("centre", "colour"):
            values = values.reshape(-1, 2 if name == "centre" else 3)
        arrays[name] = values.astype(np.float32) if name == "colour" else values
    return arrays


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write beside `path` then rename, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_tif(
    spec: SceneSpec, layout: _Layout, path: Path, progress: ProgressCallback | None
) -> None:
    renderer = _Renderer(spec, layout)
    profile = {
        "driver": "GTiff",
        "width": spec.width,
        "height": spec.height,
        "count": 3,
        "dtype": "uint8",
        "crs": spec.crs,
        "transform": spec.transform,
        "tiled": True,
        "blockxsize": spec.block,
        "blockysize": spec.block,
        "compress": "deflate",
        "zlevel": 1,  # the noisy texture barely compresses; speed matters more
        "num_threads": "ALL_CPUS",
        "photometric": "RGB",
        "interleave": "pixel",
    }
    strips = list(_strips(spec))
    with rasterio.open(path, "w", **profile) as dst:
        for strip in strips:
            window = Window(0, strip.first, spec.width, strip.stop - strip.first)
            dst.write(renderer.render(strip), window=window)
            if progress is not None:
                progress((strip.index + 1) / len(strips))


def _feature_collection(spec: SceneSpec, objects: Sequence[SceneObject]) -> dict:
    """RFC 7946: WGS84 longitude/latitude, exterior rings anticlockwise."""
    shapes = [mapping(orient(o.polygon, 1.0)) for o in objects]
    lonlat = transform_geom(spec.crs, "EPSG:4326", shapes, precision=7) if shapes else []
    features = [
        {
            "type": "Feature",
            "id": o.id,
            "properties": {"id": o.id, "class": o.cls},
            "geometry": {"type": "Polygon", "coordinates": geometry["coordinates"]},
        }
        for o, geometry in zip(objects, lonlat, strict=True)
    ]
    return {"type": "FeatureCollection", "features": features}


def _summary(spec: SceneSpec, objects: Sequence[SceneObject]) -> SceneSummary:
    counts = {cls: sum(o.cls == cls for o in objects) for cls in CLASSES}
    lonlat = transform_bounds(spec.crs, "EPSG:4326", *spec.bounds, densify_pts=21)
    return SceneSummary(counts, spec.width, spec.height, spec.crs, spec.bounds, lonlat)


def write_scene(
    spec: SceneSpec,
    tif_path: str | os.PathLike[str],
    geojson_path: str | os.PathLike[str],
    progress: ProgressCallback | None = None,
) -> SceneSummary:
    """Render the scene to a tiled RGB GeoTIFF and its objects to GeoJSON.

    `progress` gets the finished fraction (0..1] after each strip of blocks.
    """
    layout = _plan_layout(spec)
    _write_atomically(Path(tif_path), lambda tmp: _write_tif(spec, layout, tmp, progress))
    collection = json.dumps(_feature_collection(spec, layout.objects), separators=(",", ":"))
    _write_atomically(Path(geojson_path), lambda tmp: tmp.write_text(collection))
    return _summary(spec, layout.objects)
