"""Trains the demo detector (trees, buildings, cars) for the synthetic demo scene, on CPU.

The training scenes come from `scenes.synthetic` with seeds other than the demo scene's, so the
demo is a fair test. Labels are the truth polygons rasterised into a class mask in which touching
instances of one class are parted by a 1-px background line: the model then learns to leave a
valley between touching crowns, which the distance-transform watershed downstream can split.

The trainer's default network (a U-Net over the pretrained EfficientNet-Lite0 encoder,
trainer.network) trains for a fixed wall-clock budget, then is exported to ONNX with softmax inside
(input already standardised, as serving does per `DetectorSpec`), checked against torch, embedded
with its spec and scored by per-class pixel IoU on a held-out synthetic scene.

    python -m trainer.demo_detector OUT.onnx [--seconds N] [--seed S]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.features import rasterize

from inference.format import DetectorSpec, embed_spec
from inference.session import load_detector
from scenes.synthetic import SceneObject, SceneSpec, plan_scene, write_scene
from trainer.loop import TrainConfig, train
from trainer.network import (
    CONTEXT_PX,
    MULTIPLE,
    REGION_CHUNK_PX,
    WINDOW_CORE_PX,
    build_network,
    export_onnx,
    onnx_torch_difference,
)
from trainer.targets import as_classes, class_target

CLASS_NAMES = ("tree", "building", "car")
DEMO_NETWORK = TrainConfig().network  # the trainer's default
TRAIN_SEEDS = (101, 102, 103, 104)
TRAIN_SIZE = 2048  # px; one scene renders in about a second
HOLDOUT_SEED = 999
HOLDOUT_SIZE = 1024
# Painting order in the renderer (cars, then roofs, then crowns): the visible object wins a pixel.
PAINT_ORDER = ("car", "building", "tree")

Progress = Callable[[float], None]


@dataclass(frozen=True)
class LabelledScene:
    """A rendered scene and its labels, all as arrays in the scene's pixel grid."""

    image: np.ndarray  # (3, H, W) uint8
    truth: np.ndarray  # (H, W) uint8 class index per pixel, 0 = background
    target: np.ndarray  # (H, W) uint8 training label: `truth` with instance gaps
    centres: np.ndarray  # (K, 3) row, col, class of each object, for object-centred chips


def demo_spec(mean: Sequence[float], std: Sequence[float]) -> DetectorSpec:
    """The spec the demo detector carries; only the band statistics come from training."""
    return DetectorSpec(
        model_type="Segmentor",
        class_names=CLASS_NAMES,
        resolution_m=0.3,
        # The margin covers the network's receptive field (trainer.network.CONTEXT_PX), so
        # windows give the same probabilities as one inference over a whole area: no seams.
        # Core and margin are multiples of 16, the network's total stride, so every window sits
        # on the same pixel lattice.
        tile_size=WINDOW_CORE_PX + 2 * CONTEXT_PX[DEMO_NETWORK],
        overlap_px=CONTEXT_PX[DEMO_NETWORK],
        region_chunk_px=REGION_CHUNK_PX,
        input_bands=(1, 2, 3),
        mean=tuple(round(float(m), 6) for m in mean),
        std=tuple(round(float(s), 6) for s in std),
        score_threshold=0.5,
        min_area_m2=1.0,
        name="demo: trees, buildings, cars",
    )


# Data ------------------------------------------------------------------------------------------


def render_image(spec: SceneSpec) -> np.ndarray:
    """The scene's pixels, via the real GeoTIFF writer so training sees what serving will."""
    with tempfile.TemporaryDirectory(prefix="demo-detector-") as folder:
        tif = Path(folder) / "scene.tif"
        write_scene(spec, tif, Path(folder) / "truth.geojson")
        with rasterio.open(tif) as src:
            return src.read()


def instance_raster(spec: SceneSpec, objects: Sequence[SceneObject]) -> np.ndarray:
    """1-based instance numbers per pixel, burnt in painting order so the visible object wins."""
    ordered = sorted(objects, key=lambda o: PAINT_ORDER.index(o.cls))
    shapes = [(o.polygon, i + 1) for i, o in enumerate(ordered)]
    ids = rasterize(
        shapes, out_shape=(spec.height, spec.width), transform=spec.transform, dtype="int32"
    )
    return ids if shapes else np.zeros((spec.height, spec.width), np.int32)


def instance_classes(objects: Sequence[SceneObject]) -> np.ndarray:
    """Class index of instance number i at position i (0 for no instance)."""
    ordered = sorted(objects, key=lambda o: PAINT_ORDER.index(o.cls))
    return np.array([0] + [CLASS_NAMES.index(o.cls) + 1 for o in ordered], np.uint8)


def object_centres(spec: SceneSpec, objects: Sequence[SceneObject]) -> np.ndarray:
    """Row, column and class index of each object's centroid."""
    inverse = ~spec.transform
    rows = []
    for o in objects:
        col, row = inverse * (o.polygon.centroid.x, o.polygon.centroid.y)
        rows.append((int(row), int(col), CLASS_NAMES.index(o.cls) + 1))
    return np.array(rows, np.int64).reshape(-1, 3)


def labelled_scene(
    seed: int, size: int, density: float = 1.0, gap_radius: int = 0
) -> LabelledScene:
    """Render one synthetic scene and rasterise its truth into training labels."""
    base = SceneSpec()
    spec = SceneSpec(
        width=size,
        height=size,
        seed=seed,
        block=512,
        trees_per_km2=base.trees_per_km2 * density,
        buildings_per_km2=base.buildings_per_km2 * density,
        cars_per_km2=base.cars_per_km2 * density,
    )
    objects = plan_scene(spec)
    ids = instance_raster(spec, objects)
    classes = instance_classes(objects)
    truth = classes[ids]
    target = class_target(ids, classes, gap_radius)
    return LabelledScene(render_image(spec), truth, target, object_centres(spec, objects))


@functools.lru_cache(maxsize=1)
def training_scenes(density: float, gap_radius: int) -> tuple[LabelledScene, ...]:
    """The training scenes; cached, as rendering them is most of a short run's set-up time."""
    return tuple(labelled_scene(seed, TRAIN_SIZE, density, gap_radius) for seed in TRAIN_SEEDS)


def band_stats(scenes: Sequence[LabelledScene]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of pixels scaled to 0..1, over all training scenes."""
    pixels = np.concatenate([s.image.reshape(3, -1) for s in scenes], axis=1)
    scaled = pixels.astype(np.float64) / 255.0
    return scaled.mean(axis=1), scaled.std(axis=1)


def standardise(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 (3, H, W) -> float32, the way serving feeds the model per DetectorSpec."""
    scaled = image.astype(np.float32) / 255.0
    return (scaled - mean.astype(np.float32)[:, None, None]) / std.astype(np.float32)[:, None, None]


def class_weights(scenes: Sequence[LabelledScene], power: float) -> torch.Tensor:
    """Inverse-frequency weights, softened by `power`: cars are a tiny share of pixels."""
    counts = sum(np.bincount(as_classes(s.target).ravel(), minlength=4) for s in scenes)
    frequency = np.maximum(counts / counts.sum(), 1e-6)
    weights = frequency**-power
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


class ChipSampler:
    """Random chips with flips and quarter turns, mostly centred on objects (most of a scene is
    fields and grass, which a few chips teach well enough)."""

    def __init__(
        self, scenes: Sequence[LabelledScene], inputs: Sequence[np.ndarray], config: TrainConfig
    ) -> None:
        self.scenes, self.inputs, self.config = scenes, inputs, config

    def chip_origin(self, scene: LabelledScene, rng: np.random.Generator) -> tuple[int, int]:
        size = self.config.chip
        height, width = scene.truth.shape
        if len(scene.centres) and rng.random() < self.config.object_chips:
            row, col = self.pick_object(scene, rng)
            row, col = row - rng.integers(size), col - rng.integers(size)
        else:
            row, col = rng.integers(height - size + 1), rng.integers(width - size + 1)
        return int(np.clip(row, 0, height - size)), int(np.clip(col, 0, width - size))

    @staticmethod
    def pick_object(scene: LabelledScene, rng: np.random.Generator) -> tuple[int, int]:
        """An object's centre, each class equally likely: without this, whether the few cars
        are learned within a short budget is a matter of luck (IoU 0.0 to 0.6 across seeds)."""
        centres = scene.centres
        cls = rng.choice(np.unique(centres[:, 2]))
        centres = centres[centres[:, 2] == cls]
        row, col, _ = centres[rng.integers(len(centres))]
        return int(row), int(col)

    def chip(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        index = int(rng.integers(len(self.scenes)))
        scene, size = self.scenes[index], self.config.chip
        row, col = self.chip_origin(scene, rng)
        x = self.inputs[index][:, row : row + size, col : col + size]
        y = scene.target[row : row + size, col : col + size]
        turns = int(rng.integers(4))
        x, y = np.rot90(x, turns, axes=(1, 2)), np.rot90(y, turns)
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        return x, y

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        chips = [self.chip(rng) for _ in range(self.config.batch)]
        x = np.ascontiguousarray(np.stack([c[0] for c in chips]))
        y = np.stack([c[1] for c in chips]).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)


# Export and evaluation -------------------------------------------------------------------------


def pad_to_multiple(x: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
    """Reflect-pad (C, H, W) on the bottom and right up to multiples of `multiple`."""
    _, height, width = x.shape
    pad_h, pad_w = -height % multiple, -width % multiple
    return np.pad(x, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")


def predict_classes(path: Path, image: np.ndarray) -> np.ndarray:
    """Arg-max class per pixel of a whole uint8 image, run through the ONNX file as served."""
    detector = load_detector(path, ["CPUExecutionProvider"])
    spec = detector.spec
    x = standardise(image, np.array(spec.mean), np.array(spec.std))
    probabilities = detector.run(pad_to_multiple(x)[None])[0]
    return probabilities[:, : image.shape[1], : image.shape[2]].argmax(axis=0)


def pixel_iou(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Intersection over union of each class's pixels."""
    scores = {}
    for index, name in enumerate(CLASS_NAMES, start=1):
        p, t = predicted == index, truth == index
        union = np.count_nonzero(p | t)
        scores[name] = round(float(np.count_nonzero(p & t) / union), 4) if union else math.nan
    return scores


def write_atomically(out_path: Path, write: Callable[[Path], None]) -> None:
    """Write beside `out_path`, then rename, so nobody loads a half-written detector."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.part")
    try:
        write(tmp)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# The whole job ---------------------------------------------------------------------------------


def build_demo_detector(
    out_path: Path,
    *,
    seconds: float = 90.0,
    seed: int = 0,
    progress: Progress | None = None,
    steps: int | None = None,
    config: TrainConfig | None = None,
) -> dict:
    """Train, export, verify and score the demo detector; write it to `out_path`.

    `seconds` bounds the training loop (scene generation, export and scoring add about 10 s).
    `steps`, if given, trains exactly that many steps instead, so a rerun gives the same
    weights. Returns a report: steps, seconds, final loss, held-out IoU, ONNX-vs-torch diff.
    """
    out_path = Path(out_path)
    config = config or TrainConfig()
    began = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(seed)
    scenes = training_scenes(config.density, config.gap_radius)
    mean, std = band_stats(scenes)
    inputs = [standardise(s.image, mean, std) for s in scenes]
    sampler = ChipSampler(scenes, inputs, config)
    if config.network != DEMO_NETWORK:
        raise ValueError(f"the demo detector's spec is for {DEMO_NETWORK}, not {config.network}")
    net = build_network(config.network, config.widths, len(CLASS_NAMES) + 1, bands=3)
    weights = class_weights(scenes, config.weight_power)
    train_began = time.perf_counter()
    step_count, loss = train(
        net,
        sampler,
        weights,
        config,
        seconds=seconds,
        seed=seed,
        steps=steps,
        progress=(lambda p: progress(p.fraction)) if progress is not None else None,
    )
    train_seconds = time.perf_counter() - train_began
    net.eval()
    check_chips, _ = sampler.batch(np.random.default_rng(seed + 1))
    spec = demo_spec(mean, std)
    report: dict = {}

    def write(tmp: Path) -> None:
        export_onnx(net, tmp)
        report["onnx_max_abs_diff"] = onnx_torch_difference(net, tmp, check_chips[:4])
        if not report["onnx_max_abs_diff"] < 1e-4:
            raise RuntimeError(f"ONNX output differs from torch by {report['onnx_max_abs_diff']}")
        embed_spec(tmp, spec)
        holdout = labelled_scene(HOLDOUT_SEED, HOLDOUT_SIZE)
        report["holdout_iou"] = pixel_iou(predict_classes(tmp, holdout.image), holdout.truth)

    write_atomically(out_path, write)
    if progress is not None:
        progress(1.0)
    return {
        "path": str(out_path),
        "steps": step_count,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - began, 1),
        "final_loss": round(loss, 4),
        "holdout_iou": report["holdout_iou"],
        "onnx_max_abs_diff": report["onnx_max_abs_diff"],
        "mean": list(spec.mean),
        "std": list(spec.std),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the ONNX detector")
    parser.add_argument("--seconds", type=float, default=90.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and chips")
    parser.add_argument("--steps", type=int, default=None, help="train exactly this many steps")
    args = parser.parse_args(argv)
    report = build_demo_detector(args.out, seconds=args.seconds, seed=args.seed, steps=args.steps)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
