"""Experiments: score the training *methodology* (network, loop, augmentation, post-processing),
not one model, on a repository of datasets that look like what users build.

A suite is a list of datasets: synthetic scenes the project renders (one object kind each, so
each trains a one-class detector, the others being background) and, when present, real imagery
from the shared data folder (NEON tree crowns, SpaceNet buildings). Every dataset has a training
zone and a disjoint accuracy zone. For each label count N, the training area grows as a square
from the zone's top-left corner (then as a strip along the zone) until it holds N objects, as a
user labels a patch of ground exhaustively; the accuracy area always holds the same objects, so
rows with different N are comparable. Area edges never cut an object: one whose anchor (a point
inside it) lies inside is kept whole, one whose anchor lies outside is cut out of the area (its
pixels teach nothing), which is how a careful user draws.

`run_suite` trains each (dataset, N) with the current defaults (or a given `TrainConfig`), scores
the accuracy area with the served post-processing, prints a table with the change in F1 against
the previous run of the suite, and writes `<suite>-<timestamp>.json` and `<suite>-latest.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import shapely
from rasterio.warp import transform_geom
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    from trainer.loop import TrainConfig

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA_ENV = "TILEDETECT_SHARED_DATA"
CACHE_ENV = "TILEDETECT_EXPERIMENTS_CACHE"
DEFAULT_RESULTS = REPO / "experiments" / "results"
SYNTHETIC_LABELS = (20, 50, 100)
REAL_LABELS = (100,)  # as many as the training half holds (fewer than 100 in both)
GAP_M = 30.0  # between the synthetic training and accuracy zones: wider than any object
_PRECISION_M = 0.01  # area outlines snapped to 1 cm so the WGS84 round trip keeps them valid

Progress = Callable[[str], None]


class DatasetMissing(Exception):
    """The dataset's files are not on this machine; the suite skips it."""


# --- datasets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A dataset ready to make annotations from: an image, its truth and its two zones."""

    name: str
    image: Path
    meta: dict  # export.run.image_meta
    truth: dict  # WGS84 FeatureCollection with properties.class
    classes: tuple[str, ...]
    training_zone: BaseGeometry  # image CRS
    accuracy_zone: BaseGeometry  # image CRS (the scoring image's, where there is one)
    as_boxes: bool = False  # labels drawn as axis-aligned boxes, and scored as such
    fold: int = 0
    # Cross-image runs score another image of the same kind (a site the training never saw):
    # its path, description and truth; None scores the accuracy zone of `image`.
    score_image: Path | None = None
    score_meta: dict | None = None
    score_truth: dict | None = None

    def scoring(self) -> tuple[dict, dict]:
        """(meta, truth) of the image the accuracy zone lies in."""
        if self.score_image is None:
            return self.meta, self.truth
        return self.score_meta, self.score_truth


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    classes: tuple[str, ...]
    labels: tuple[int, ...]  # default label counts
    # (cache dir, shared data dir, fold) -> Prepared; raises DatasetMissing
    prepare: Callable[[Path, Path, int], Prepared]
    folds: int = 1  # a real image is scored in two folds: each half trains, the other scores


def _synthetic(
    name: str,
    description: str,
    cls: str | tuple[str, ...],
    labels: Sequence[int] = SYNTHETIC_LABELS,
    training_share: float = 0.55,
    **spec_fields,
) -> Dataset:
    """A rendered scene: training zone = the west `training_share` of it, accuracy zone = the
    rest east of a GAP_M gap."""
    classes = (cls,) if isinstance(cls, str) else tuple(cls)

    def prepare(cache: Path, data_dir: Path, fold: int = 0) -> Prepared:
        from export.run import image_meta
        from scenes.synthetic import SceneSpec, write_scene

        spec = SceneSpec(block=256, **spec_fields)
        key = hashlib.sha1(repr(spec).encode()).hexdigest()[:10]
        folder = cache / f"{name}-{key}"
        tif, truth = folder / "scene.tif", folder / "truth.geojson"
        if not (tif.exists() and truth.exists()):
            folder.mkdir(parents=True, exist_ok=True)
            write_scene(spec, tif, truth)
        left, bottom, right, top = spec.bounds
        split = left + training_share * (right - left)
        return Prepared(
            name=name,
            image=tif,
            meta=image_meta(tif),
            truth=json.loads(truth.read_text()),
            classes=classes,
            training_zone=box(left, bottom, split, top),
            accuracy_zone=box(split + GAP_M, bottom, right, top),
        )

    return Dataset(name, description, classes, tuple(labels), prepare)


def _halves(
    name: str,
    description: str,
    folder: str,
    image: str,
    truth: str,
    cls: str | tuple[str, ...],
    as_boxes: bool,
) -> Dataset:
    """A real image in two folds: fold 0 trains on its west half and scores the east half,
    fold 1 the other way round (one half of one image would choose settings that fit it)."""
    classes = (cls,) if isinstance(cls, str) else tuple(cls)

    def prepare(cache: Path, data_dir: Path, fold: int = 0) -> Prepared:
        tif, meta, collection = _real_image(data_dir / folder, image, truth)
        left, bottom, right, top = meta["bounds"]
        middle = (left + right) / 2
        west, east = box(left, bottom, middle, top), box(middle, bottom, right, top)
        return Prepared(
            name=name,
            image=tif,
            meta=meta,
            truth=collection,
            classes=classes,
            training_zone=west if fold == 0 else east,
            accuracy_zone=east if fold == 0 else west,
            as_boxes=as_boxes,
            fold=fold,
        )

    return Dataset(name, description, classes, REAL_LABELS, prepare, folds=2)


def _cross_image(
    name: str,
    description: str,
    train: tuple[str, str, str],
    score: tuple[str, str, str],
    cls: str,
) -> Dataset:
    """Train on every label of one real image, score every label of another of the same kind,
    their classes merged into `cls`: the closest the suite comes to a site never seen."""

    def prepare(cache: Path, data_dir: Path, fold: int = 0) -> Prepared:
        tif, meta, truth = _real_image(data_dir / train[0], train[1], train[2])
        other, other_meta, other_truth = _real_image(data_dir / score[0], score[1], score[2])
        return Prepared(
            name=name,
            image=tif,
            meta=meta,
            truth=_merged_classes(truth, cls),
            classes=(cls,),
            training_zone=box(*meta["bounds"]),
            accuracy_zone=box(*other_meta["bounds"]),
            as_boxes=True,
            score_image=other,
            score_meta=other_meta,
            score_truth=_merged_classes(other_truth, cls),
        )

    return Dataset(name, description, (cls,), REAL_LABELS, prepare)


def _real_image(folder: Path, image: str, truth: str) -> tuple[Path, dict, dict]:
    from export.run import image_meta

    tif, labels = folder / image, folder / truth
    missing = [str(p) for p in (tif, labels) if not p.exists()]
    if missing:
        raise DatasetMissing(f"{', '.join(missing)} not found")
    return tif, image_meta(tif), json.loads(labels.read_text())


def _merged_classes(collection: dict, cls: str) -> dict:
    features = [
        {**f, "properties": {**f["properties"], "class": cls}} for f in collection["features"]
    ]
    return {**collection, "features": features}


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        _synthetic(
            "synthetic-trees",
            "460 m rural scene, 0.3 m: hedgerows, groves of touching crowns, single trees",
            "tree",
            width=1536,
            height=1536,
            seed=1,
            trees_per_km2=1500.0,
        ),
        _synthetic(
            "synthetic-buildings",
            "770 m village scene, 0.3 m: gabled houses (some L-shaped) and flat-roofed halls",
            "building",
            width=2560,
            height=2560,
            seed=1,
            buildings_per_km2=450.0,
            cars_per_km2=150.0,
            road_spacing_m=200.0,
        ),
        _synthetic(
            "synthetic-cars",
            "460 m scene, 0.3 m: cars on roads, drives and in marked car-park bays",
            "car",
            width=1536,
            height=1536,
            seed=1,
            cars_per_km2=1200.0,
            buildings_per_km2=120.0,
            road_spacing_m=200.0,
        ),
        _synthetic(
            "synthetic-mixed",
            "460 m dense scene, 0.3 m: trees, buildings and cars in one three-class detector",
            ("tree", "building", "car"),
            width=1536,
            height=1536,
            seed=2,
            trees_per_km2=500.0,
            buildings_per_km2=300.0,
            cars_per_km2=500.0,
            road_spacing_m=200.0,
        ),
        _synthetic(
            "synthetic-quick",
            "230 m tree scene for tests: trains in seconds",
            "tree",
            labels=(10,),
            training_share=0.5,
            width=768,
            height=768,
            seed=3,
            trees_per_km2=1500.0,
        ),
        _halves(
            "neon-osbs029",
            "NEON Ordway-Swisher 0.1 m RGB, 40 x 40 m: tree crowns as boxes (DeepForest)",
            "osbs",
            "OSBS_029.tif",
            "OSBS_029_trees.geojson",
            "tree",
            as_boxes=True,
        ),
        _halves(
            "neon-soap061",
            "NEON Soaproot Saddle 0.1 m RGB, 40 x 40 m: standing dead and alive conifers as boxes",
            "soap",
            "SOAP_061.tif",
            "SOAP_061_trees.geojson",
            ("dead", "alive"),
            as_boxes=True,
        ),
        _cross_image(
            "neon-osbs029-to-soap061",
            "trained on all of OSBS_029 (Florida), scored on all of SOAP_061 (California), "
            "dead and alive merged into tree",
            ("osbs", "OSBS_029.tif", "OSBS_029_trees.geojson"),
            ("soap", "SOAP_061.tif", "SOAP_061_trees.geojson"),
            "tree",
        ),
        _halves(
            "spacenet-atlanta",
            "SpaceNet 4 Atlanta 0.5 m panchromatic (uint16), 450 x 450 m: building footprints",
            "spacenet_atl",
            "sample_geotiff.tif",
            "buildings.geojson",
            "building",
            as_boxes=False,
        ),
    )
}

_SYNTHETIC = ("synthetic-trees", "synthetic-buildings", "synthetic-cars")
_NEON = ("neon-osbs029", "neon-soap061", "neon-osbs029-to-soap061")
_REAL = (*_NEON, "spacenet-atlanta")
SUITES: dict[str, tuple[str, ...]] = {
    "default": _SYNTHETIC + _REAL,
    "synthetic": _SYNTHETIC,
    "real": _REAL,
    "neon": _NEON,
    "all": _SYNTHETIC + ("synthetic-mixed",) + _REAL,
    "quick": ("synthetic-quick",),
}


def suite_datasets(suite: str) -> list[Dataset]:
    """The datasets of a suite; a dataset's own name is a suite of one."""
    if suite in SUITES:
        return [DATASETS[name] for name in SUITES[suite]]
    if suite in DATASETS:
        return [DATASETS[suite]]
    known = ", ".join([*SUITES, *DATASETS])
    raise KeyError(f"unknown suite {suite!r}; one of: {known}")


def shared_data_dir() -> Path:
    return Path(os.environ.get(SHARED_DATA_ENV) or REPO.parent / "shared" / "data")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO / ".cache" / "experiments")


# --- annotations for N labels --------------------------------------------------------------------


@dataclass(frozen=True)
class Objects:
    """The dataset's objects of its classes in the image CRS, as labels will be drawn."""

    geometries: list[BaseGeometry]
    anchors: list[BaseGeometry]  # representative points, as annotations_from_truth uses


def truth_objects(prepared: Prepared) -> Objects:
    crs = prepared.meta["crs_wkt"]
    geometries, anchors = [], []
    for feature in prepared.truth["features"]:
        if feature["properties"].get("class") not in prepared.classes:
            continue
        local = shape(transform_geom("EPSG:4326", crs, feature["geometry"]))
        geometries.append(local.envelope if prepared.as_boxes else local)
        anchors.append(local.representative_point())
    return Objects(geometries, anchors)


def grown_box(zone: BaseGeometry, anchors: Sequence[BaseGeometry], wanted: int) -> BaseGeometry:
    """The smallest box grown from the zone's top-left corner (a square, then a strip along the
    zone's long side) holding `wanted` anchors; the whole zone if it holds fewer."""
    left, bottom, right, top = zone.bounds
    reach = sorted(
        max(p.x - left, top - p.y) for p in anchors if zone.contains(p)
    )  # a box of extent s holds the anchors whose reach <= s
    longest = max(right - left, top - bottom)
    if wanted >= len(reach):
        return zone
    inner = reach[wanted - 1] if wanted > 0 else 0.0
    outer = next((r for r in reach[wanted:] if r > inner), None)  # ties join in
    if outer is None:
        return zone
    extent = (inner + outer) / 2
    extent = min(extent, longest)
    return box(left, max(bottom, top - extent), min(right, left + extent), top)


def clean_edges(area: BaseGeometry, objects: Objects) -> BaseGeometry:
    """The area with whole objects: those anchored inside added whole, those anchored outside
    cut out."""
    inside, outside = [], []
    for geometry, anchor in zip(objects.geometries, objects.anchors, strict=True):
        if not geometry.intersects(area):
            continue
        (inside if area.contains(anchor) else outside).append(geometry)
    cleaned = area
    if outside:
        cleaned = cleaned.difference(shapely.union_all(outside))
    if inside:
        cleaned = cleaned.union(shapely.union_all(inside))
    cleaned = shapely.set_precision(shapely.make_valid(cleaned), _PRECISION_M)
    return _polygonal(cleaned)


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """Only the polygon parts (set operations can leave lines and points behind)."""
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [
        g for g in getattr(geometry, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")
    ]
    return shapely.union_all(parts)


@dataclass(frozen=True)
class Labelled:
    requested: int
    collection: dict  # WGS84 FeatureCollection, as a user would upload it
    annotations: object  # trainer.annotations.Annotations
    training_labels: int
    accuracy_labels: int
    clean_edges: bool
    # Cross-image runs: the scoring image's accuracy area and labels (None: on `annotations`)
    score_collection: dict | None = None
    score_annotations: object | None = None

    def scored(self):
        """The Annotations holding the accuracy area."""
        return self.annotations if self.score_annotations is None else self.score_annotations


def make_annotations(prepared: Prepared, objects: Objects, wanted: int) -> Labelled:
    """Training area with about `wanted` labels, the fixed accuracy area, parsed as the API
    parses uploads. Falls back to plain boxes if the cleaned outlines do not survive the
    WGS84 round trip."""
    from trainer.annotations import AnnotationError

    grown = grown_box(prepared.training_zone, objects.anchors, wanted)
    for clean in (True, False):
        training = clean_edges(grown, objects) if clean else grown
        try:
            if prepared.score_image is None:
                accuracy = (
                    clean_edges(prepared.accuracy_zone, objects)
                    if clean
                    else prepared.accuracy_zone
                )
                accuracy = _polygonal(
                    shapely.set_precision(accuracy.difference(training.buffer(0.05)), _PRECISION_M)
                )
                collection, parsed = _parsed(prepared, prepared.meta, prepared.truth,
                                             [training], [accuracy])  # fmt: skip
                scored, score_collection, score_parsed = parsed, None, None
            else:
                collection, parsed = _parsed(prepared, prepared.meta, prepared.truth,
                                             [training], [])  # fmt: skip
                score_collection, score_parsed = _parsed(
                    prepared, prepared.score_meta, prepared.score_truth,
                    [], [prepared.accuracy_zone],
                )  # fmt: skip
                scored = score_parsed
        except AnnotationError:
            if not clean:
                raise
            continue
        return Labelled(
            requested=wanted,
            collection=collection,
            annotations=parsed,
            training_labels=sum(len(parsed.labels_in(a)) for a in parsed.training),
            accuracy_labels=sum(len(scored.labels_in(a)) for a in scored.accuracy),
            clean_edges=clean,
            score_collection=score_collection,
            score_annotations=score_parsed,
        )
    raise AssertionError("unreachable")


def _parsed(prepared: Prepared, meta: dict, truth: dict, training, accuracy) -> tuple[dict, object]:
    """Areas and the truth inside them as a user's upload, and as the API parses it."""
    from scenes.annotations import annotations_from_truth
    from trainer.annotations import parse_annotations

    crs = meta["crs_wkt"]
    collection = annotations_from_truth(
        truth,
        crs,
        training=training,
        accuracy=accuracy,
        classes=prepared.classes,
        as_boxes=prepared.as_boxes,
    )
    parsed = parse_annotations(
        collection,
        classes=prepared.classes,
        image_crs_wkt=crs,
        image_bounds=tuple(meta["bounds"]),
        require_labels=bool(training),  # a scoring image has an accuracy area alone
    )
    return collection, parsed


# --- one run -------------------------------------------------------------------------------------


def _diagnose(run_dir: Path, prepared: Prepared, labelled: Labelled) -> dict:
    """What went wrong, from the verdicts in predictions.geojson: missed labels that a merged
    prediction swallowed, that were found with a poor outline, or not found at all; false
    positives that merge several labels, are a piece of a label, or lie on background."""
    crs = prepared.scoring()[0]["crs_wkt"]
    annotations = labelled.scored()
    labels = [lab.geometry for area in annotations.accuracy for lab in annotations.labels_in(area)]
    features = json.loads((run_dir / "predictions.geojson").read_text())["features"]
    predicted, false_positive = [], []
    for feature in features:
        verdict = feature["properties"]["verdict"]
        if verdict not in ("true_positive", "false_positive"):
            continue
        geometry = shape(transform_geom("EPSG:4326", crs, feature["geometry"]))
        if prepared.as_boxes:
            geometry = geometry.envelope
        predicted.append(geometry)
        false_positive.append(verdict == "false_positive")
    missed = [
        shape(transform_geom("EPSG:4326", crs, f["geometry"]))
        for f in features
        if f["properties"]["verdict"] == "missed"
    ]
    if prepared.as_boxes:
        missed = [m.envelope for m in missed]

    def covered(label: BaseGeometry, prediction: BaseGeometry) -> float:
        return label.intersection(prediction).area / max(label.area, 1e-12)

    def labels_under(prediction: BaseGeometry) -> int:
        return sum(1 for lab in labels if covered(lab, prediction) >= 0.3)

    out = dict.fromkeys(
        ("missed_merged", "missed_outline", "missed_not_found", "fp_merged", "fp_part", "fp_other"),
        0,
    )
    for label in missed:
        near = [p for p in predicted if covered(label, p) >= 0.3]
        if any(labels_under(p) >= 2 for p in near):
            out["missed_merged"] += 1
        elif near or any(_iou(label, p) >= 0.2 for p in predicted):
            out["missed_outline"] += 1
        else:
            out["missed_not_found"] += 1
    for prediction, wrong in zip(predicted, false_positive, strict=True):
        if not wrong:
            continue
        if labels_under(prediction) >= 2:
            out["fp_merged"] += 1
        elif any(lab.intersection(prediction).area >= 0.5 * prediction.area for lab in labels):
            out["fp_part"] += 1
        else:
            out["fp_other"] += 1
    return out


def _iou(a: BaseGeometry, b: BaseGeometry) -> float:
    union = a.union(b).area
    return a.intersection(b).area / union if union else 0.0


def run_one(
    prepared: Prepared,
    labelled: Labelled,
    run_dir: Path,
    *,
    seconds: float | None,
    steps: int | None,
    seed: int,
    config,
    progress: Progress,
    resolution_m: float | None = None,
) -> dict:
    """Train and score one (dataset, N); returns its table row."""
    from trainer.data import ImageSource
    from trainer.train import TrainingRequest, train_detector

    images = {"image": ImageSource("image", str(prepared.image), prepared.meta)}
    annotations = {"image": labelled.annotations}
    if prepared.score_image is not None:
        images["score"] = ImageSource("score", str(prepared.score_image), prepared.score_meta)
        annotations["score"] = labelled.score_annotations
    request = TrainingRequest(
        name=f"{prepared.name}-{labelled.requested}",
        class_names=prepared.classes,
        images=images,
        annotations=annotations,
        seconds=seconds,
        steps=steps,
        seed=seed,
        resolution_m=resolution_m,
        config=config,
    )
    last = [time.perf_counter()]

    def tick(state) -> None:
        if time.perf_counter() - last[0] >= 60.0:
            last[0] = time.perf_counter()
            progress(
                f"    step {state.step}, loss {state.loss:.3f}, "
                f"{state.elapsed:.0f} s, about {state.seconds_left:.0f} s left"
            )

    (run_dir / "annotations.geojson").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "annotations.geojson").write_text(json.dumps(labelled.collection))
    began, cpu_began = time.perf_counter(), time.process_time()
    report = train_detector(request, run_dir, progress=tick)
    cpu_seconds = time.process_time() - cpu_began
    wall = time.perf_counter() - began
    metrics = report["metrics"] or {}
    obj = metrics.get("object", {})
    loose = metrics.get("object_iou40", {})
    per_class = {
        name: {
            "f1": scores.get("f1"),
            "f1_iou40": metrics.get("per_class_iou40", {}).get(name, {}).get("f1"),
            "labelled": scores.get("tp", 0) + scores.get("fn", 0),
        }
        for name, scores in metrics.get("per_class", {}).items()
    }
    predicted = sum(c["predicted"] for c in metrics.get("counts", []))
    counted = sum(c["labelled"] for c in metrics.get("counts", []))
    return {
        "dataset": prepared.name,
        "fold": prepared.fold,
        "seed": seed,
        "labels": report["labels"],
        "labels_requested": labelled.requested,
        "train_seconds": report["train_seconds"],
        "steps": report["steps"],
        "steps_per_second": report["steps_per_second"],
        "precision": obj.get("precision"),
        "recall": obj.get("recall"),
        "f1": obj.get("f1"),
        "precision_iou40": loose.get("precision"),
        "recall_iou40": loose.get("recall"),
        "f1_iou40": loose.get("f1"),
        "per_class": per_class,
        "counting_f1": metrics.get("counting_f1"),
        "count_error": round(abs(predicted - counted) / counted, 4) if counted else None,
        "foreground_iou": metrics.get("foreground_iou"),
        "tp": obj.get("tp"),
        "fp": obj.get("fp"),
        "fn": obj.get("fn"),
        "accuracy_labels": counted,
        "predicted": predicted,
        "final_loss": report["final_loss"],
        "seconds": round(wall, 1),
        # CPU seconds the process got per wall second, over training and scoring: about the
        # thread count when the machine is ours, far less when others load it
        "cpu_per_second": round(cpu_seconds / wall, 2) if wall else None,
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "clean_edges": labelled.clean_edges,
        "diagnosis": _diagnose(run_dir, prepared, labelled),
        "run_dir": str(run_dir),
    }


# --- the suite -----------------------------------------------------------------------------------


def machine() -> dict:
    """Where the numbers come from: they depend on the CPU and on who else is using it."""
    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "nice": os.nice(0) if hasattr(os, "nice") else None,
    }


def git_state() -> dict:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


def _timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _label_counts(dataset: Dataset, labels: Sequence[int] | None) -> list[int]:
    return sorted(set(labels if labels else dataset.labels))


DEFAULT_SEEDS = (0, 1, 2)


def run_suite(
    suite: str,
    seconds: float | None,
    labels: list[int] | None,
    out_dir: Path,
    progress: Progress = print,
    *,
    steps: int | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    folds: int | None = None,
    config=None,
    cache: Path | None = None,
    data_dir: Path | None = None,
    resolution_m: float | None = None,
) -> list[dict]:
    """Train and score the methodology on every dataset of `suite`, for each label count, each
    fold of the dataset (real images: 2) and each seed.

    `seconds` is each training's budget (None: trainer.train.default_seconds()); `steps`
    trains exactly that many steps instead. `labels` overrides the datasets' label counts; a
    count beyond what a training zone holds trains on all it holds, once. `folds` caps the
    folds per dataset (None: all). `config` is the TrainConfig to evaluate (default: the
    trainer's); `resolution_m` the detector resolution (default: each image's own). Writes
    `out_dir/<suite>-<timestamp>.json` and `out_dir/<suite>-latest.json` with every run and the
    summary (mean and spread over folds and seeds), prints the per-run table with the change
    in F1 against the previous latest, then the summary, and returns the rows (a failed run's
    row has an "error").
    """
    with warnings.catch_warnings():  # rio-tiler's note that a scene has no overviews
        warnings.filterwarnings("ignore", message=".*has no Overviews.*")
        return _run_suite(
            suite, seconds, labels, out_dir, progress, steps, tuple(seeds), folds, config, cache,
            data_dir, resolution_m,
        )  # fmt: skip


def _run_suite(
    suite, seconds, labels, out_dir, progress, steps, seeds, folds, config, cache, data_dir,
    resolution_m,
):  # fmt: skip
    from trainer.loop import TrainConfig
    from trainer.train import default_seconds

    if not seeds:
        raise ValueError("at least one seed is needed")
    datasets = suite_datasets(suite)
    config = config or TrainConfig()
    cache = Path(cache or cache_dir())
    data_dir = Path(data_dir or shared_data_dir())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _timestamp()
    latest = out_dir / f"{suite}-latest.json"
    previous = json.loads(latest.read_text()) if latest.exists() else None
    budget = None if steps else (seconds or default_seconds())
    progress(
        f"suite {suite}: {len(datasets)} dataset(s), "
        + (f"{steps} steps" if steps else f"{budget:.0f} s")
        + f" per training, seeds {', '.join(map(str, seeds))}"
    )
    rows: list[dict] = []
    skipped: list[dict] = []
    for dataset in datasets:
        for fold in range(min(dataset.folds, folds or dataset.folds)):
            try:
                prepared = dataset.prepare(cache, data_dir, fold)
            except DatasetMissing as exc:
                progress(f"skipped {dataset.name}: {exc}")
                skipped.append({"dataset": dataset.name, "reason": str(exc)})
                break
            rows += _runs_of(
                prepared, dataset, labels, seeds, stamp, suite, cache, progress,
                seconds=budget, steps=steps, config=config, resolution_m=resolution_m,
            )  # fmt: skip
    _attach_deltas(rows, previous)
    summary = summarise(rows)
    record = {
        "suite": suite,
        "timestamp": stamp,
        "git": git_state(),
        "machine": machine(),
        "budget": {"seconds": budget, "steps": steps, "seeds": list(seeds)},
        "resolution_m": resolution_m,
        "labels_requested": labels,
        "config": dataclasses.asdict(config),
        "previous": previous["timestamp"] if previous else None,
        "skipped": skipped,
        "summary": summary,
        "rows": rows,
    }
    path = out_dir / f"{suite}-{stamp}.json"
    counter = 1
    while path.exists():
        counter += 1
        path = out_dir / f"{suite}-{stamp}-{counter}.json"
    text = json.dumps(record, indent=1)
    path.write_text(text)
    staging = latest.with_name(f".{latest.name}.{os.getpid()}.partial")
    staging.write_text(text)
    os.replace(staging, latest)
    progress(format_table(rows, with_delta=previous is not None))
    progress(format_summary(summary))
    progress(f"saved {path}")
    return rows


def _runs_of(
    prepared, dataset, labels, seeds, stamp, suite, cache, progress, **training
) -> list[dict]:
    """Every (label count, seed) run of one prepared fold."""
    objects = truth_objects(prepared)
    rows: list[dict] = []
    done: set[int] = set()
    for wanted in _label_counts(dataset, labels):
        labelled = make_annotations(prepared, objects, wanted)
        if labelled.training_labels in done:
            continue  # the zone holds fewer: this count was trained already
        done.add(labelled.training_labels)
        progress(
            f"{dataset.name} fold {prepared.fold}: {labelled.training_labels} training labels "
            f"(asked {wanted}), {labelled.accuracy_labels} accuracy labels"
        )
        for seed in seeds:
            name = f"{dataset.name}-{wanted}-f{prepared.fold}-s{seed}"
            run_dir = cache / "runs" / f"{suite}-{stamp}" / name
            try:
                row = run_one(prepared, labelled, run_dir, seed=seed, progress=progress, **training)
            except Exception as exc:  # one failure must not lose the other rows
                progress(f"  FAILED: {exc!r}")
                row = {
                    "dataset": dataset.name,
                    "fold": prepared.fold,
                    "seed": seed,
                    "labels": labelled.training_labels,
                    "labels_requested": wanted,
                    "error": "".join(traceback.format_exception_only(exc)).strip(),
                }
            rows.append(row)
            if "error" not in row:
                progress(
                    f"  seed {seed}: F1 {row['f1']:.3f} (P {row['precision']:.3f}, "
                    f"R {row['recall']:.3f}), F1@0.4 {row['f1_iou40']:.3f}, "
                    f"{row['steps']} steps in {row['train_seconds']:.0f} s"
                )
    return rows


def _key(row: dict) -> tuple:
    return (
        row["dataset"],
        row.get("labels_requested", row["labels"]),
        row.get("fold", 0),
        row.get("seed", 0),
    )


def _attach_deltas(rows: list[dict], previous: dict | None) -> None:
    before = {_key(r): r for r in (previous or {}).get("rows", []) if r.get("f1") is not None}
    for row in rows:
        old = before.get(_key(row))
        row["delta_f1"] = (
            round(row["f1"] - old["f1"], 4)
            if old is not None and row.get("f1") is not None
            else None
        )


SUMMARISED = ("f1", "f1_iou40", "precision", "recall", "steps", "count_error")


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per (dataset, label count): mean, sample standard deviation and range over every fold
    and seed that scored, for F1 at IoU 0.5 and 0.4, precision, recall, steps and count error,
    and the same for each class's F1. A difference inside the spread is no difference."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        if "error" not in row and row.get("f1") is not None:
            groups.setdefault(_group(row), []).append(row)
    out = []
    for (dataset, labels), members in groups.items():
        entry: dict = {
            "dataset": dataset,
            "labels": labels,
            "labels_trained": sorted({r["labels"] for r in members}),
            "runs": len(members),
            "folds": len({r.get("fold", 0) for r in members}),
            "seeds": len({r.get("seed", 0) for r in members}),
            "failed": sum(1 for r in rows if "error" in r and _group(r) == (dataset, labels)),
        }
        for key in SUMMARISED:
            entry[key] = _spread([r.get(key) for r in members])
        classes = sorted({c for r in members for c in r.get("per_class", {})})
        if len(classes) > 1:
            entry["per_class"] = {
                c: {
                    k: _spread([r["per_class"].get(c, {}).get(k) for r in members])
                    for k in ("f1", "f1_iou40")
                }
                for c in classes
            }
        out.append(entry)
    return out


def _group(row: dict) -> tuple[str, int]:
    """Folds of one dataset hold different label counts; they share the count asked for."""
    return row["dataset"], row.get("labels_requested", row["labels"])


def _spread(values: Sequence[float | None]) -> dict | None:
    import statistics

    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return {
        "mean": round(statistics.fmean(present), 4),
        "sd": round(statistics.stdev(present), 4) if len(present) > 1 else 0.0,
        "min": round(min(present), 4),
        "max": round(max(present), 4),
    }


def format_summary(summary: Sequence[dict]) -> str:
    """The summary as an aligned table: mean ± sd over folds and seeds."""

    def cell(value: dict | None, form: str = "{:.3f}") -> str:
        if value is None:
            return "-"
        return f"{form.format(value['mean'])} ± {form.format(value['sd'])}"

    cells = [["dataset", "labels", "runs", "F1@0.5", "F1@0.4", "P", "R", "steps"]]
    for entry in summary:
        cells.append(
            [
                entry["dataset"],
                str(entry["labels"]),
                f"{entry['runs']} ({entry['folds']}x{entry['seeds']})",
                cell(entry["f1"]),
                cell(entry["f1_iou40"]),
                cell(entry["precision"]),
                cell(entry["recall"]),
                cell(entry["steps"], "{:.0f}"),
            ]
        )
        for cls, figures in entry.get("per_class", {}).items():
            cells.append(
                ["  " + cls, "", "", cell(figures["f1"]), cell(figures["f1_iou40"]), "", "", ""]
            )
    return "summary (mean ± sd over folds and seeds)\n" + _aligned(cells)


_COLUMNS = (
    ("dataset", "dataset", "{}"),
    ("fold", "fold", "{}"),
    ("seed", "seed", "{}"),
    ("labels", "labels", "{}"),
    ("train s", "train_seconds", "{:.0f}"),
    ("steps", "steps", "{}"),
    ("P", "precision", "{:.3f}"),
    ("R", "recall", "{:.3f}"),
    ("F1", "f1", "{:.3f}"),
    ("F1@0.4", "f1_iou40", "{:.3f}"),
    ("ΔF1", "delta_f1", "{:+.3f}"),
    ("count F", "counting_f1", "{:.3f}"),
    ("count err", "count_error", "{:.1%}"),
    ("fg IoU", "foreground_iou", "{:.3f}"),
)


def format_table(rows: Sequence[dict], with_delta: bool = True) -> str:
    """Rows as an aligned text table; ΔF1 (against the previous run) when `with_delta`."""
    columns = [c for c in _COLUMNS if with_delta or c[1] != "delta_f1"]
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        line = []
        for _, key, form in columns:
            value = row.get(key)
            if "error" in row and key not in ("dataset", "fold", "seed", "labels"):
                value = "failed" if key == "train_seconds" else None
            line.append(
                "-" if value is None else value if isinstance(value, str) else form.format(value)
            )
        cells.append(line)
    return _aligned(cells)


def _aligned(cells: Sequence[Sequence[str]]) -> str:
    """Rows of cells as text: the first column left-aligned, the others right, a rule below
    the header."""
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def config_with(overrides: Sequence[str]) -> TrainConfig:
    """The trainer's TrainConfig with `KEY=VALUE` overrides (e.g. `gap_radius=1`), to compare
    a methodology change before making it the default."""
    from trainer.loop import TrainConfig

    config = TrainConfig()
    kinds = {f.name: type(getattr(config, f.name)) for f in dataclasses.fields(config)}
    changes: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in kinds:
            raise KeyError(f"unknown setting {item!r}; settings: {', '.join(kinds)}")
        kind = kinds[key]
        if kind is tuple:
            changes[key] = tuple(int(v) for v in raw.split(","))
        elif kind is bool:  # bool("false") would be True
            if raw.lower() not in ("true", "false", "1", "0"):
                raise KeyError(f"{key} is true or false, not {raw!r}")
            changes[key] = raw.lower() in ("true", "1")
        else:
            changes[key] = kind(raw)
    return dataclasses.replace(config, **changes)


def run_from_cli(
    suite: str = "default",
    seconds: float | None = None,
    labels: list[int] | None = None,
    out_dir: Path | None = None,
    steps: int | None = None,
    settings: Sequence[str] = (),
    seeds: Sequence[int] = DEFAULT_SEEDS,
    folds: int | None = None,
) -> int:
    """The `tiledetect experiments run` command: 0 when every run scored, 1 when one failed,
    2 for an unknown suite or setting. `steps` trains a fixed step count instead of a time
    budget (comparable across runs on a machine others are loading); `settings` override
    TrainConfig fields; every dataset is trained with each of `seeds` in each of its folds
    (at most `folds`)."""
    try:
        suite_datasets(suite)
        config = config_with(settings)
    except (KeyError, ValueError) as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    rows = run_suite(
        suite, seconds, labels, Path(out_dir or DEFAULT_RESULTS),
        steps=steps, config=config, seeds=seeds, folds=folds,
    )  # fmt: skip
    return 1 if any("error" in r for r in rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer.experiments")
    parser.add_argument("--suite", default="default")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--labels", default=None, help="comma-separated, e.g. 50,100")
    parser.add_argument("--steps", type=int, default=None, help="fixed steps, not seconds")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], help="TrainConfig KEY=VALUE")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--folds", type=int, default=None, help="at most this many folds")
    args = parser.parse_args(argv)
    labels = [int(x) for x in args.labels.split(",")] if args.labels else None
    seeds = [int(x) for x in args.seeds.split(",")]
    return run_from_cli(
        args.suite, args.seconds, labels, args.out, args.steps, args.set, seeds, args.folds
    )


if __name__ == "__main__":
    sys.exit(main())
