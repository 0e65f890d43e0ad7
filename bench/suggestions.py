"""Do the suggestions choose better places to label than chance? A simulated user's labelling loop.

The image is cut into a grid of square cells (the size of a training area). A few cells are
accuracy areas, fixed for the whole run; one more is the first training area. Each round the user
labels two more cells (labels taken from the ground truth: every object whose representative
point lies in the cell) chosen (a) as the top two suggestions of the last version that are on the
grid and unused, or (b) at random among the unused cells; then the detector is retrained from
scratch on every cell labelled so far and scored on the accuracy areas. Two rounds, three seeds,
on the synthetic trees scene and on NEON OSBS_029 (from ../shared/data, skipped when absent).
Reports F1 (IoU 0.5) per round and strategy, mean and spread over seeds.

    python -m bench.suggestions [--steps N] [--seeds 0,1,2] [--rounds 2] [--dataset NAME]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.warp import transform_geom
from shapely.geometry import box, shape

from bench.common import machine, write_results
from export.run import image_meta
from scenes.annotations import annotations_from_truth
from trainer.annotations import parse_annotations
from trainer.data import ImageSource
from trainer.train import TrainingRequest, train_detector

STRATEGIES = ("suggested", "random")
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@dataclass(frozen=True)
class Scene:
    name: str
    image: Path
    truth: dict  # WGS84 FeatureCollection, properties.class
    classes: tuple[str, ...]
    grid: int  # cells per side
    as_boxes: bool


def synthetic_scene(folder: Path) -> Scene:
    from scenes.synthetic import SceneSpec, write_scene

    spec = SceneSpec(width=1536, height=1536, seed=21, block=256)
    tif, truth = folder / "trees.tif", folder / "trees.geojson"
    write_scene(spec, tif, truth)
    return Scene("synthetic-trees", tif, json.loads(truth.read_text()), ("tree",), 6, False)


def osbs_scene() -> Scene | None:
    tif = SHARED_DATA / "osbs" / "OSBS_029.tif"
    labels = SHARED_DATA / "osbs" / "OSBS_029_trees.geojson"
    if not (tif.exists() and labels.exists()):
        return None
    return Scene("neon-osbs029", tif, json.loads(labels.read_text()), ("tree",), 4, True)


def cells(scene: Scene, meta: dict) -> list:
    left, bottom, right, top = meta["bounds"]
    w, h = (right - left) / scene.grid, (top - bottom) / scene.grid
    return [
        box(left + c * w, top - (r + 1) * h, left + (c + 1) * w, top - r * h)
        for r in range(scene.grid)
        for c in range(scene.grid)
    ]


def objects_in(scene: Scene, meta: dict, cell) -> int:
    collection = annotations_from_truth(
        scene.truth, meta["crs_wkt"], training=[cell], classes=list(scene.classes)
    )
    return sum(1 for f in collection["features"] if "class" in f["properties"])


def train_and_score(
    scene, meta, grid, training, accuracy, steps, seed, folder
) -> tuple[float, dict]:
    collection = annotations_from_truth(
        scene.truth,
        meta["crs_wkt"],
        training=[grid[i] for i in training],
        accuracy=[grid[i] for i in accuracy],
        classes=list(scene.classes),
        as_boxes=scene.as_boxes,
    )
    parsed = parse_annotations(
        collection,
        classes=scene.classes,
        image_crs_wkt=meta["crs_wkt"],
        image_bounds=tuple(meta["bounds"]),
    )
    request = TrainingRequest(
        name=scene.name,
        class_names=scene.classes,
        images={"image": ImageSource("image", str(scene.image), meta)},
        annotations={"image": parsed},
        steps=steps,
        seed=seed,
    )
    report = train_detector(request, folder)
    suggestions = json.loads((folder / "suggestions.geojson").read_text())
    return report["metrics"]["object"]["f1"], suggestions


def suggested_cells(suggestions: dict, grid: list, meta: dict, used: set[int]) -> list[int]:
    """Grid cells the suggestions point at (their centre), best first, not yet used."""
    picked = []
    for feature in suggestions["features"]:
        place = shape(transform_geom("EPSG:4326", meta["crs_wkt"], feature["geometry"]))
        centre = place.centroid
        for index, cell in enumerate(grid):
            if index not in used and index not in picked and cell.contains(centre):
                picked.append(index)
    return picked


def run_scene(scene: Scene, steps: int, seeds: list[int], rounds: int, work: Path) -> dict:
    meta = image_meta(scene.image)
    grid = cells(scene, meta)
    curves: dict[str, list[list[float]]] = {s: [[] for _ in range(rounds + 1)] for s in STRATEGIES}
    suggestion_seconds = []
    for seed in seeds:
        rng = np.random.default_rng(1000 + seed)
        order = rng.permutation(len(grid)).tolist()
        accuracy = order[: max(3, len(grid) // 8)]
        # A user's first training area holds objects: the first cell (in this seed's order)
        # with at least three.
        first = next(i for i in order[len(accuracy) :] if objects_in(scene, meta, grid[i]) >= 3)
        start, suggestions = train_and_score(
            scene, meta, grid, [first], accuracy, steps, seed, work / f"{scene.name}-{seed}-0"
        )
        suggestion_seconds.append(suggestions["summary"]["seconds"])
        print(f"{scene.name} seed {seed} round 0: F1 {start:.3f}", flush=True)
        for strategy in STRATEGIES:
            curves[strategy][0].append(start)
            training, last = [first], suggestions
            for round_ in range(1, rounds + 1):
                used = set(training) | set(accuracy)
                free = [i for i in range(len(grid)) if i not in used]
                if strategy == "suggested":
                    chosen = suggested_cells(last, grid, meta, used)[:2]
                    extra = [i for i in rng.permutation(free).tolist() if i not in chosen]
                    chosen += extra[: 2 - len(chosen)]  # fewer than two on the grid: chance
                else:
                    chosen = rng.choice(free, size=2, replace=False).tolist()
                training = training + chosen
                folder = work / f"{scene.name}-{seed}-{strategy}-{round_}"
                f1, last = train_and_score(
                    scene, meta, grid, training, accuracy, steps, seed, folder
                )
                suggestion_seconds.append(last["summary"]["seconds"])
                curves[strategy][round_].append(f1)
                print(
                    f"{scene.name} seed {seed} {strategy} round {round_} cells {chosen}: "
                    f"F1 {f1:.3f}",
                    flush=True,
                )
    summary = {
        strategy: [
            {"mean": round(statistics.mean(v), 4), "sd": round(statistics.pstdev(v), 4), "runs": v}
            for v in curves[strategy]
        ]
        for strategy in STRATEGIES
    }
    return {
        "grid": scene.grid,
        "steps": steps,
        "seeds": seeds,
        "f1_per_round": summary,
        "suggestion_seconds_median": round(statistics.median(suggestion_seconds), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suggestions")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dataset", choices=("synthetic-trees", "neon-osbs029"), default=None)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    began = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scenes = [synthetic_scene(work), osbs_scene()]
        for scene in scenes:
            if scene is None or (args.dataset and scene.name != args.dataset):
                continue
            results[scene.name] = run_scene(scene, args.steps, seeds, args.rounds, work)
            for strategy in STRATEGIES:
                line = " -> ".join(
                    f"{r['mean']:.3f}±{r['sd']:.3f}"
                    for r in results[scene.name]["f1_per_round"][strategy]
                )
                print(f"suggestions {scene.name} {strategy}: F1 per round {line}", flush=True)
    payload = {"machine": machine(), "seconds": round(time.perf_counter() - began), **results}
    print(f"suggestions results: {write_results('suggestions', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
