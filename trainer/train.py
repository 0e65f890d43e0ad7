"""Train a detector from annotations: read the training areas, train for the budget, export to
ONNX with its metadata, check onnxruntime against torch, score the accuracy areas and predict
the testing areas. Writes `model.onnx`, `report.json` and `predictions.geojson` into a folder,
each under a temporary name first, so a half-finished run never looks like a version.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import mapping

from inference.format import BOX_CHANNELS, DetectorSpec, embed_spec
from inference.session import available_providers, load_detector
from trainer.annotations import Annotations
from trainer.data import (
    AreaSampler,
    ImageSource,
    band_stats,
    class_weights,
    expand_ratio_for,
    read_area,
    standardise,
)
from trainer.evaluate import Scores, predict_area, score_areas
from trainer.loop import TrainConfig, TrainProgress, train
from trainer.network import (
    CONTEXT_PX,
    REGION_CHUNK_PX,
    WINDOW_CORE_PX,
    build_network,
    export_onnx,
    onnx_torch_difference,
)
from trainer.suggestions import suggest

INPUT_NORMS = ("image", "pretrained")
ONNX_TOLERANCE = 1e-4


def default_seconds() -> float:
    """A budget that suits the hardware: 4 minutes on CPU (at most 5 on 2 cores), 2 on a GPU."""
    return 120.0 if torch.cuda.is_available() else 240.0


@dataclass(frozen=True)
class TrainingRequest:
    name: str
    class_names: tuple[str, ...]
    images: dict[str, ImageSource]  # image id -> source
    annotations: dict[str, Annotations]  # image id -> its annotations (image CRS)
    seconds: float | None = None
    steps: int | None = None  # exact step count instead of a time budget (reproducible runs)
    seed: int = 0
    resolution_m: float | None = None  # default: the first image's ground sample distance
    colors: tuple[str, ...] = ()  # one per class for the version's spec (default: the palette)
    config: TrainConfig = TrainConfig()


def train_detector(
    request: TrainingRequest,
    out_dir: str | Path,
    progress: Callable[[TrainProgress], None] | None = None,
) -> dict:
    """Run the whole training; returns the report also written to `out_dir/report.json`."""
    began = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(request.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    class_names = request.class_names
    first = next(iter(request.images.values()))
    resolution = request.resolution_m or round(first.meta["gsd"], 4)
    bands = tuple(range(1, min(3, first.meta["count"]) + 1))
    areas = []
    label_count = 0
    for image_id, labelled in request.annotations.items():
        source = request.images[image_id]
        for area in labelled.training:
            labels = labelled.labels_in(area)
            label_count += len(labels)
            areas.append(
                read_area(
                    source,
                    area,
                    labels,
                    class_names,
                    bands,
                    resolution,
                    gap_radius=request.config.gap_radius,
                    box_targets=request.config.box_targets,
                    core_ratio=request.config.core_ratio,
                )  # fmt: skip
            )
    if not areas:
        raise ValueError("no training area to learn from")
    output_shape = _output_shape(request)
    # A box head only where the labels are boxes: outlines stay outlines.
    config = replace(request.config, box_head=request.config.box_head and output_shape == "box")
    mean, std = input_stats(areas, config.input_norm)
    inputs = [standardise(a.pixels, mean, std) for a in areas]
    sampler = AreaSampler(areas, inputs, config)
    outputs = len(class_names) + 1 + (BOX_CHANNELS if config.box_head else 0)
    net = build_network(config.network, config.widths, outputs, len(bands))
    weights = class_weights(areas, len(class_names) + 1, config.weight_power)
    seconds = request.seconds or default_seconds()
    curve: list[dict] = []

    def on_step(state: TrainProgress) -> None:
        if state.step % 10 == 0 or state.step == 1:
            curve.append({"step": state.step, "loss": round(state.loss, 4)})
        if progress is not None:
            progress(state)

    train_began = time.perf_counter()
    steps, loss = train(
        net, sampler, weights, config,
        seconds=seconds, seed=request.seed, steps=request.steps, progress=on_step,
    )  # fmt: skip
    train_seconds = time.perf_counter() - train_began
    net.eval()
    spec = DetectorSpec(
        model_type="Segmentor",
        class_names=class_names,
        resolution_m=resolution,
        tile_size=WINDOW_CORE_PX + 2 * CONTEXT_PX[config.network],
        overlap_px=CONTEXT_PX[config.network],
        region_chunk_px=REGION_CHUNK_PX,
        input_bands=bands,
        mean=tuple(round(float(m), 6) for m in mean),
        std=tuple(round(float(s), 6) for s in std),
        score_threshold=0.5,
        min_area_m2=_min_area(request),
        colors=request.colors,
        name=request.name,
        expand_ratio=0.0 if config.box_head else expand_ratio_for(config.core_ratio),
        output_shape=output_shape,
        box_regression=config.box_head,
    )
    model_path = out_dir / "model.onnx"
    check = sampler.batch(np.random.default_rng(request.seed + 1))[0][:4]
    difference = _export_checked(net, spec, model_path, check, len(bands))
    detector = load_detector(model_path)
    scores, predictions = _evaluate(detector, request)
    # Where to label next, right after the training, for the web app's list (trainer.suggestions).
    suggestions = suggest(detector, request.images, request.annotations, seed=request.seed)
    report = {
        "name": request.name,
        "classes": list(class_names),
        "resolution_m": resolution,
        "labels": label_count,
        "training_areas": len(areas),
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "steps_per_second": round(steps / train_seconds, 2) if train_seconds else None,
        "seconds": round(time.perf_counter() - began, 1),
        "final_loss": round(loss, 4),
        "loss_curve": curve,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "execution_provider": available_providers()[0],
        "onnx_max_abs_diff": difference,
        "metrics": scores.as_dict(class_names) if scores.results else None,
        "suggestions": suggestions["summary"],
    }
    _write_json(out_dir / "predictions.geojson", predictions)
    _write_json(out_dir / "suggestions.geojson", suggestions)
    _write_json(out_dir / "report.json", report)
    return report


def input_stats(areas, input_norm: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std that standardise the input (on the 0..1 scale of 8-bit values):
    the training areas' own, or the pretrained encoder's (x - 0.5) / 0.5 where the data are
    8-bit (other data keep their own: a uint16 band is far outside 0..1)."""
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, not {input_norm!r}")
    mean, std = band_stats(areas)
    if input_norm == "pretrained" and max(float(a.pixels.max()) for a in areas) <= 1.0:
        return np.full_like(mean, 0.5), np.full_like(std, 0.5)
    return mean, std


def _output_shape(request: TrainingRequest) -> str:
    """Boxes back where every label was drawn as a box (as Picterra's box detectors do);
    outlines otherwise."""
    kinds = {label.kind for a in request.annotations.values() for label in a.labels}
    return "box" if kinds == {"box"} else "polygon"


def _export_checked(
    net: torch.nn.Module, spec: DetectorSpec, path: Path, chips: torch.Tensor, bands: int
) -> float:
    """Export, compare onnxruntime with torch on real chips, embed the spec, then publish."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
    box_classes = spec.class_channels if spec.box_regression else None
    try:
        export_onnx(net, staging, bands, box_classes)
        difference = onnx_torch_difference(net, staging, chips, box_classes)
        if not difference < ONNX_TOLERANCE:
            raise RuntimeError(f"onnxruntime differs from torch by {difference:.2e}; not published")
        embed_spec(staging, spec)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return difference


def _evaluate(detector, request: TrainingRequest) -> tuple[Scores, dict]:
    """Scores on the accuracy areas, and predictions in testing and accuracy areas (WGS84)."""
    scores = Scores()
    features = []
    for image_id, labelled in request.annotations.items():
        source = request.images[image_id]
        crs = source.meta["crs_wkt"]
        labels_in = {a.index: labelled.labels_in(a) for a in labelled.accuracy}
        image_scores = score_areas(detector, source, labelled.accuracy, labels_in)
        for result in image_scores.results:
            result.image_id = image_id
            wgs84 = transform_bounds(crs, "EPSG:4326", *result.area.geometry.bounds)
            result.bounds_wgs84 = tuple(round(v, 8) for v in wgs84)
        scores.results.extend(image_scores.results)
        for verdict, geometry, props in image_scores.features():
            features.append(_feature(geometry, crs, image_id, "accuracy_area", verdict, props))
        for area in labelled.testing:
            objects, _, _ = predict_area(detector, source, area)
            for obj in objects:
                props = {"class": obj.class_name, "score": round(obj.score, 4)}
                features.append(
                    _feature(obj.geometry, crs, image_id, "testing_area", "prediction", props)
                )
    return scores, {"type": "FeatureCollection", "features": features}


def _feature(geometry, crs: str, image_id: str, role: str, verdict: str, props: dict) -> dict:
    return {
        "type": "Feature",
        "geometry": transform_geom(crs, "EPSG:4326", mapping(geometry), precision=8),
        "properties": {"image_id": image_id, "area_role": role, "verdict": verdict, **props},
    }


def _min_area(request: TrainingRequest) -> float:
    """A fifth of the smallest object labelled in a training area (in m²), so slivers are
    dropped, not objects (accuracy-area labels stay unseen: their scores stay honest)."""
    areas = []
    for image_id, labelled in request.annotations.items():
        meta = request.images[image_id].meta
        metres_per_unit = meta["gsd"] / meta["resolution"][0]
        areas += [
            label.geometry.area * metres_per_unit**2
            for area in labelled.training
            for label in labelled.labels_in(area)
            if label.geometry.geom_type != "Point"
        ]
    return round(max(0.05, 0.2 * min(areas)), 3) if areas else 0.5


def _write_json(path: Path, value: dict) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
    staging.write_text(json.dumps(value, indent=1))
    os.replace(staging, path)
