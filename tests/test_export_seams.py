"""Bulk export seams: objects on cell borders and corners come out once, whole, as painted.

The export (export/) sweeps the detector over an image in cells on Dask; an object crossing a cell
border is either owned by the one cell holding its representative point (small objects) or cut
into parts that the merge step unions back (objects larger than the cell's object margin). This
test paints a synthetic scene whose objects sit exactly on the plan's cell borders and corners,
runs a real export through Dask with a real ONNX detector, and checks the result three ways:

* against the painted truth: same count per class, one-to-one matches at IoU >= 0.9, no
  overlaps, every object one Polygon, areas consistent;
* against one detection pass over the whole image (no cells, no seams): the same objects;
* GeoPackage and FlatGeobuf give the same objects.

The detector is exact and needs no training: a 1x1 convolution whose logits are
k * (red - green) for "roof" and k * (blue - green) for "pool", then a softmax, so a painted pixel
is its class with probability ~1 and every other pixel (background, nodata) is background. Its
predictions are purely per pixel, so any difference between the export and the truth or the
single pass comes from the cell machinery (ownership, clipping, merging), not the model.

The scene is georeferenced twice: on round coordinates with 0.5 m pixels (every coordinate
exact in binary floating point) and on an odd origin with 0.3 m pixels (coordinates inexact, so
two cells computing the same border coordinate from different origins may differ in the last
bits: the case that makes seams double or drop objects).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import shapely.affinity
from affine import Affine
from distributed import Client, LocalCluster
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely import STRtree
from shapely.geometry import Point, box
from shapely.geometry.base import BaseGeometry

from export.cell_task import OBJECT_MARGIN_PX
from export.run import ExportSource, image_meta, plan_cells, run_export
from export.writers import format_named
from inference.format import DetectorSpec, embed_spec
from inference.metrics import match_objects
from inference.objects import extract_objects
from inference.reading import read_region
from inference.session import load_detector

pytestmark = pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning")

SIZE = 1200  # px, square image; not a whole number of cells, so the last cells are cut
CELL_PX = 384  # two 192-px window cores per cell: a 4 x 4 grid with a thin last column/row
CLASSES = ("roof", "pool")
COLOURS = {"roof": (220, 40, 40), "pool": (40, 60, 220)}
BACKGROUND = (120, 124, 118)  # neutral grey, with a little noise added
LOGIT_GAIN = 8.0  # per unit of standardised colour difference
LOGIT_BIAS = 8.0  # keeps grey, noise and nodata (standardised 0) firmly background
MIN_GAP_PX = 4  # same-class objects keep this far apart (touching ones would be one object)


@dataclass(frozen=True)
class Georef:
    """Where the scene lies: UTM 33N, top-left corner and pixel size in metres."""

    name: str
    origin: tuple[float, float]
    pixel_m: float

    @property
    def transform(self) -> Affine:
        return from_origin(*self.origin, self.pixel_m, self.pixel_m)


GEOREFS = (
    Georef("round", (500000.0, 5400000.0), 0.5),
    Georef("odd", (512345.67, 5398765.43), 0.3),
)


def detector_spec(pixel_m: float) -> DetectorSpec:
    """Native resolution = the scene's pixel size, so the export reads pixels unresampled."""
    return DetectorSpec(
        model_type="Segmentor",
        class_names=CLASSES,
        resolution_m=pixel_m,
        tile_size=256,
        overlap_px=32,  # core 192 px; a 1x1 convolution needs no context, but the lattice holds
        input_bands=(1, 2, 3),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        score_threshold=0.5,
        min_area_m2=0.5,
        name="test: red roofs, blue pools",
    )


def write_detector(path: Path, spec: DetectorSpec) -> Path:
    """Export the fixed-weight per-pixel colour classifier to ONNX and embed its spec."""
    import torch

    conv = torch.nn.Conv2d(3, 3, kernel_size=1)
    with torch.no_grad():
        # Output channels: background, roof, pool. Input channels: standardised R, G, B.
        conv.weight.copy_(
            torch.tensor(
                [[0.0, 0.0, 0.0], [LOGIT_GAIN, -LOGIT_GAIN, 0.0], [0.0, -LOGIT_GAIN, LOGIT_GAIN]]
            ).reshape(3, 3, 1, 1)
        )
        conv.bias.copy_(torch.tensor([0.0, -LOGIT_BIAS, -LOGIT_BIAS]))
    net = torch.nn.Sequential(conv, torch.nn.Softmax(dim=1)).eval()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and fine here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            torch.zeros(1, 3, 64, 64),
            str(path),
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={
                "image": {0: "batch", 2: "height", 3: "width"},
                "probabilities": {0: "batch", 2: "height", 3: "width"},
            },
            dynamo=False,
        )
    embed_spec(path, spec)
    return path


# The scene ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Painted:
    """One painted object: its class and outline in pixel coordinates (x = column, y = row)."""

    name: str
    cls: str
    pixels: BaseGeometry

    @property
    def large(self) -> bool:
        """Larger than the object margin: crosses borders as parts that the merge unions."""
        minx, miny, maxx, maxy = self.pixels.bounds
        return max(maxx - minx, maxy - miny) >= OBJECT_MARGIN_PX


def scene_objects(b1: int, b2: int, b3: int, size: int) -> list[Painted]:
    """The objects, placed on the cell borders b1 < b2 < b3 (px from the image's top-left)."""

    def roof(name: str, shape: BaseGeometry) -> Painted:
        return Painted(name, "roof", shape)

    def pool(name: str, shape: BaseGeometry) -> Painted:
        return Painted(name, "pool", shape)

    return [
        # Small objects (under the 64-px margin): owned by the cell of their representative point.
        roof("centred on a vertical border", box(b1 - 10, 90, b1 + 10, 110)),
        roof("centred on a horizontal border", box(570, b1 - 10, 590, b1 + 10)),
        roof("centred on a 4-cell corner", box(b1 - 10, b1 - 10, b1 + 10, b1 + 10)),
        roof("odd-sized, off-centre on a corner", box(b3 - 12, b1 - 14, b3 + 9, b1 + 17)),
        roof("off-centre across a vertical border", box(b2 - 8, 150, b2 + 32, 166)),
        roof("off-centre across a horizontal border", box(200, b2 - 28, 216, b2 + 22)),
        roof("disc centred on a vertical border", Point(b1, 600).buffer(25, quad_segs=16)),
        # Large objects: cut into parts by the cells, merged back.
        roof("bar across two vertical borders", box(100, 1000, 1000, 1030)),
        roof("bar across two horizontal borders", box(1000, 300, 1024, 960)),
        roof(
            "L around a 4-cell corner",
            shapely.union(
                box(b1 - 24, b2 - 88, b1 + 16, b2 + 92), box(b1 - 24, b2 + 52, b1 + 136, b2 + 92)
            ),
        ),
        roof("square on a corner, at the image's right edge", box(b3 - 52, b2 - 50, size, b2 + 50)),
        roof("disc centred on a 4-cell corner", Point(b2, b3).buffer(40, quad_segs=16)),
        roof(
            "rotated bar across a vertical border",
            shapely.affinity.rotate(box(b2 - 70, 440, b2 + 70, 460), 30, origin="centroid"),
        ),
        roof("large, mostly on one side of a border", box(b2 - 20, 250, b2 + 80, 280)),
        roof("bar 4 px above another, across a border", box(600, 640, 900, 660)),
        roof("bar 4 px below another, across a border", box(600, 664, 900, 684)),
        # Inside one cell.
        roof("small, inside a cell", box(100, 100, 112, 112)),
        roof("medium, inside a cell", box(450, 200, 500, 230)),
        roof("large, inside a cell", box(b2 + 52, 30, b2 + 142, 110)),
        # On the image's edges (beyond them the export reads nodata).
        roof("in the image's top-left corner", box(0, 0, 18, 18)),
        roof("on the left edge", box(0, 300, 20, 330)),
        roof("on the top edge", box(600, 0, 630, 15)),
        roof("on the bottom edge", box(500, size - 20, 540, size)),
        roof("on the right edge, in the thin last cell", box(size - 15, 200, size, 220)),
        roof("on a corner and the bottom-right image corner", box(b3 - 12, b3 - 12, size, size)),
        # Two classes touching across borders: never merged with each other.
        roof("small roof ending on a border", box(900, b1 - 14, 950, b1)),
        pool("small pool starting on that border", box(900, b1, 950, b1 + 16)),
        roof("large roof beside a large pool", box(b1 - 80, 470, b1 + 80, 490)),
        pool("large pool beside a large roof", box(b1 - 80, 490, b1 + 80, 510)),
    ]


@dataclass(frozen=True)
class Scene:
    georef: Georef
    tif: Path
    onnx: Path
    spec: DetectorSpec
    objects: list[Painted]
    borders: list[int]  # px of the inner cell borders (the same for columns and rows)

    def truth(self, obj: Painted) -> BaseGeometry:
        """A painted outline in the image's CRS."""
        t = self.georef.transform
        return shapely.affinity.affine_transform(obj.pixels, [t.a, t.b, t.d, t.e, t.c, t.f])


def write_scene(
    folder: Path,
    georef: Georef,
    layout: Callable[[int, int, int, int], list[Painted]] = scene_objects,
    min_gap_px: float = MIN_GAP_PX,
) -> Scene:
    """Write the detector and the image; `layout` puts the objects where the plan has borders."""
    spec = detector_spec(georef.pixel_m)
    onnx_path = write_detector(folder / "colours.onnx", spec)
    tif = folder / "scene.tif"
    rng = np.random.default_rng(7)
    noise = rng.integers(-6, 7, size=(3, SIZE, SIZE))
    image = (np.asarray(BACKGROUND)[:, None, None] + noise).astype(np.uint8)
    profile = {
        "driver": "GTiff",
        "width": SIZE,
        "height": SIZE,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": georef.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "photometric": "RGB",
    }
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(image)

    # The cell borders come from the export's own plan, so objects sit exactly on them.
    source = ExportSource(str(tif), str(onnx_path), spec, image_meta(tif))
    jobs = plan_cells(source, folder / "plan-only", cell_px=CELL_PX)
    lefts = {round((j.cell.bounds[0] - georef.origin[0]) / georef.pixel_m) for j in jobs}
    tops = {round((georef.origin[1] - j.cell.bounds[3]) / georef.pixel_m) for j in jobs}
    borders = sorted(lefts - {0})
    assert borders == sorted(tops - {0}) == [CELL_PX, 2 * CELL_PX, 3 * CELL_PX]
    objects = layout(*borders, SIZE)

    for a, b in itertools.combinations(objects, 2):  # the scene itself must be clean
        assert a.name != b.name
        if a.cls == b.cls:
            assert a.pixels.distance(b.pixels) >= min_gap_px, (a.name, b.name)
    for obj in objects:
        mask = rasterize([(obj.pixels, 1)], out_shape=(SIZE, SIZE), dtype="uint8").astype(bool)
        image[:, mask] = np.asarray(COLOURS[obj.cls], np.uint8)[:, None]
    with rasterio.open(tif, "r+") as dst:
        dst.write(image)
    return Scene(georef, tif, onnx_path, spec, objects, borders)


# Running the export and reading it back ----------------------------------------------------------


@dataclass(frozen=True)
class Found:
    geometry: BaseGeometry
    cls: str
    area_m2: float
    cell: str


@dataclass
class Exported:
    scene: Scene
    cell_bounds: dict[str, tuple[float, float, float, float]]  # cell id -> core, image CRS
    outputs: dict[str, list[Found]]  # format name -> objects read back
    states: dict[str, str]
    summaries: dict[str, dict]
    cells: dict[str, dict]  # cell id -> the cell's own summary (objects, parts, ...)


def read_back(path: Path) -> list[Found]:
    meta, table = pyogrio.read_arrow(path)
    column = meta["geometry_name"] or "wkb_geometry"
    geometries = shapely.from_wkb(table.column(column).to_numpy(zero_copy_only=False))
    return [
        Found(g, c, a, cell)
        for g, c, a, cell in zip(
            geometries,
            table.column("class").to_pylist(),
            table.column("area_m2").to_pylist(),
            table.column("cell").to_pylist(),
            strict=True,
        )
    ]


def export(scene: Scene, folder: Path, formats: tuple[str, ...] = ("gpkg",), aoi=None) -> Exported:
    """Plan, sweep on an in-process Dask cluster and write each format; read the files back."""
    source = ExportSource(str(scene.tif), str(scene.onnx), scene.spec, image_meta(scene.tif))
    jobs = plan_cells(source, folder / "export", aoi=aoi, cell_px=CELL_PX)
    outputs, states, summaries = {}, {}, {}
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            dashboard_address=":0",  # any free port: the scheduler serves HTTP regardless
        ) as cluster,
        Client(cluster) as client,
    ):
        for fmt in formats:  # a second run finds every cell done and only merges and writes
            out_path = folder / f"objects.{fmt}"
            outcome = run_export(client, f"seams-{fmt}", source, jobs, out_path, format_named(fmt))
            states[fmt] = outcome.state
            summaries[fmt] = outcome.summary
            outputs[fmt] = read_back(out_path)
            cells = dict(outcome.sweep.done)
    bounds = {j.cell.id: j.cell.bounds for j in jobs}
    return Exported(scene, bounds, outputs, states, summaries, cells)


@pytest.fixture(scope="module", params=GEOREFS, ids=lambda g: g.name)
def exported(request, tmp_path_factory) -> Exported:
    """One scene per georeferencing, exported once to GeoPackage and once to FlatGeobuf."""
    folder = tmp_path_factory.mktemp(f"seams-{request.param.name}")
    scene = write_scene(folder, request.param)
    assert load_detector(scene.onnx).spec.as_dict() == scene.spec.as_dict()  # a well-formed file
    return export(scene, folder, formats=("gpkg", "fgb"))


def single_pass(scene: Scene) -> list:
    """The objects of one detection over the whole image at once: nothing to stitch."""
    detector = load_detector(scene.onnx)
    spec, pixel = scene.spec, scene.georef.pixel_m
    with rasterio.open(scene.tif) as src:
        left, bottom, right, top = src.bounds
        crs, transform = CRS.from_user_input(src.crs), src.transform
    context = spec.overlap_px
    margin = context * pixel  # the model's context around the image, as the cells read it
    pixels = read_region(
        str(scene.tif),
        crs,
        (left - margin, bottom - margin, right + margin, top + margin),
        (SIZE + 2 * context, SIZE + 2 * context),
        spec,
        pixel,
    )
    probabilities = detector.run(pixels[None])[0][:, context:-context, context:-context]
    return extract_objects(probabilities, transform, spec)


def iou(a: BaseGeometry, b: BaseGeometry) -> float:
    union = shapely.union(a, b).area
    return shapely.intersection(a, b).area / union if union else 0.0


def pair_up(found: list[BaseGeometry], truth: list[BaseGeometry]) -> dict[int, int]:
    """truth index -> index of the one found geometry it overlaps most (IoU), each used once."""
    pairs = {}
    for t_index, expected in enumerate(truth):
        scores = [iou(g, expected) for g in found]
        best = int(np.argmax(scores))
        assert best not in pairs.values()
        pairs[t_index] = best
    return pairs


# The checks --------------------------------------------------------------------------------------


def test_the_export_finishes_and_counts_every_painted_object(exported: Exported) -> None:
    painted = exported.scene.objects
    expected = {c: sum(1 for o in painted if o.cls == c) for c in CLASSES}
    for fmt, found in exported.outputs.items():
        assert exported.states[fmt] == "done"
        assert len(found) == len(painted), fmt
        assert {c: sum(1 for f in found if f.cls == c) for c in CLASSES} == expected
        assert exported.summaries[fmt]["objects"] == len(painted)
        assert {c: v["count"] for c, v in exported.summaries[fmt]["classes"].items()} == expected


def test_the_scene_exercises_both_seam_paths(exported: Exported) -> None:
    """Guards the test itself: objects owned whole by one cell, and parts merged across cells."""
    assert len(exported.cells) == len(exported.cell_bounds) == 16
    assert sum(c["parts"] for c in exported.cells.values()) >= 20
    assert sum(c["objects"] for c in exported.cells.values()) >= 15
    assert sum(o.large for o in exported.scene.objects) >= 10


def test_each_painted_object_comes_back_once_and_whole(exported: Exported) -> None:
    """One-to-one with the truth (no duplicates, no gaps), each a single valid polygon."""
    scene = exported.scene
    found = exported.outputs["gpkg"]
    for cls in CLASSES:
        painted = [o for o in scene.objects if o.cls == cls]
        truth = [scene.truth(o) for o in painted]
        mine = [f.geometry for f in found if f.cls == cls]
        scores = match_objects(mine, truth, min_iou=0.9)
        assert (scores.false_positives, scores.false_negatives) == (0, 0), cls
        for t_index, f_index in pair_up(mine, truth).items():
            obj, geometry = painted[t_index], mine[f_index]
            assert iou(geometry, truth[t_index]) >= 0.9, obj.name
            # Whole: one polygon, not the parts of the cells it crosses side by side.
            assert geometry.geom_type == "Polygon", obj.name
            assert geometry.is_valid, obj.name
            if obj.pixels.geom_type == "Polygon" and obj.pixels.equals(obj.pixels.envelope):
                # Painted on whole pixels, a rectangle comes back exactly (up to rounding).
                assert iou(geometry, truth[t_index]) > 0.999, obj.name


def test_no_two_objects_overlap(exported: Exported) -> None:
    """A seam object written by two cells, or a part also written whole, would overlap."""
    geometries = [f.geometry for f in exported.outputs["gpkg"]]
    pixel_area = exported.scene.georef.pixel_m**2
    left, right = STRtree(geometries).query(geometries, predicate="intersects")
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if i < j:  # different classes may touch along an edge, never share area
            assert shapely.intersection(geometries[i], geometries[j]).area < 1e-6 * pixel_area


def test_attributes_are_consistent(exported: Exported) -> None:
    """`cell` names a cell the object lies in; `area_m2` is its polygon's (UTM: 1 unit = 1 m)."""
    for found in exported.outputs["gpkg"]:
        assert found.cell in exported.cell_bounds
        assert box(*exported.cell_bounds[found.cell]).intersection(found.geometry).area > 0
        assert found.area_m2 == pytest.approx(found.geometry.area, rel=0.01)


def test_the_export_equals_one_pass_over_the_whole_image(exported: Exported) -> None:
    """Cells change nothing: the same objects as one inference over the whole image."""
    reference = single_pass(exported.scene)
    found = exported.outputs["gpkg"]
    assert len(reference) == len(found) == len(exported.scene.objects)
    for cls in CLASSES:
        expected = [o.geometry for o in reference if o.class_name == cls]
        mine = [f.geometry for f in found if f.cls == cls]
        assert len(mine) == len(expected)
        for e_index, f_index in pair_up(mine, expected).items():
            assert iou(mine[f_index], expected[e_index]) > 0.99
    by_area = sorted(round(o.area_m2, 3) for o in reference)
    assert sorted(round(f.area_m2, 3) for f in found) == pytest.approx(by_area, rel=1e-6)


def test_geopackage_and_flatgeobuf_agree(exported: Exported) -> None:
    """The second export reuses the done cells (resumability) and writes the same objects."""
    gpkg, fgb = exported.outputs["gpkg"], exported.outputs["fgb"]
    assert len(gpkg) == len(fgb)
    key = lambda f: (f.cls, f.geometry.bounds)  # noqa: E731
    for a, b in zip(sorted(gpkg, key=key), sorted(fgb, key=key), strict=True):
        assert (a.cls, a.cell) == (b.cls, b.cell)
        assert a.area_m2 == pytest.approx(b.area_m2)
        assert shapely.equals_exact(a.geometry, b.geometry, tolerance=1e-6)


# Touching objects and AOIs at seams ----------------------------------------------------------


def touching_objects(b1: int, b2: int, b3: int, size: int) -> list[Painted]:
    """Same-class objects that touch, each crossing a cell border (so each is cut into parts)."""
    return [
        # Two bars meeting only corner to corner: 4-connected extraction keeps them apart.
        Painted("bar ending at a corner", "roof", box(b1 - 100, 100, b1 + 30, 140)),
        Painted("bar starting at that corner", "roof", box(b1 + 30, 140, b1 + 60, b1 + 40)),
        # Two touching discs, both on a vertical border: the watershed parts them in two.
        Painted(
            "two touching discs",
            "roof",
            shapely.union(Point(b1, 600).buffer(40), Point(b1, 676).buffer(40)),
        ),
    ]


def test_touching_objects_cut_by_borders_stay_apart(tmp_path: Path) -> None:
    scene = write_scene(tmp_path, GEOREFS[0], touching_objects, min_gap_px=0)
    reference = single_pass(scene)
    assert len(reference) == 4  # two bars, two discs: what one pass over the image finds
    found = export(scene, tmp_path).outputs["gpkg"]
    assert [f.geometry.geom_type for f in found] == ["Polygon"] * len(reference)
    for e_index, f_index in pair_up(
        [f.geometry for f in found], [o.geometry for o in reference]
    ).items():
        assert iou(found[f_index].geometry, reference[e_index].geometry) > 0.99


def test_an_aoi_keeps_only_objects_inside_it(tmp_path: Path) -> None:
    def layout(b1: int, b2: int, b3: int, size: int) -> list[Painted]:
        return [
            Painted("small, inside the AOI", "roof", box(50, 50, 70, 70)),
            Painted("small, outside the AOI", "roof", box(300, 50, 320, 70)),
            Painted(
                "large, outside the AOI, across a border", "roof", box(300, 150, b1 + 100, 170)
            ),
        ]

    scene = write_scene(tmp_path, GEOREFS[0], layout)
    (x0, y0), pixel = scene.georef.origin, scene.georef.pixel_m
    aoi = box(x0, y0 - 250 * pixel, x0 + 200 * pixel, y0)  # columns 0-200, rows 0-250: one cell
    exported = export(scene, tmp_path, aoi=aoi)
    assert set(exported.cell_bounds) == {"r00000c00000"}
    found = exported.outputs["gpkg"]
    assert len(found) == 1
    assert iou(found[0].geometry, scene.truth(scene.objects[0])) > 0.999
