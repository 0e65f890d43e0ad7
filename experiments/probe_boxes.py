"""Why a trained detector's objects miss box labels: per-label best IoU, size and offset of the
best prediction's bounding box, and the same scores under post-processing variants, all from
one probability map (no retraining).

    PYTHONPATH=$PWD python experiments/probe_boxes.py RUN_DIR [--dataset neon-osbs029] [--fold 1]

RUN_DIR is an experiment run folder (model.onnx + annotations.geojson).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from rasterio.features import rasterize
from shapely.geometry import box

from inference.metrics import matched_pairs
from inference.objects import extract_objects
from inference.session import load_detector
from trainer.annotations import parse_annotations
from trainer.data import ImageSource, _inscribed_ellipse
from trainer.evaluate import predict_area
from trainer.experiments import DATASETS, cache_dir, shared_data_dir


def load(run_dir: Path, dataset: str, fold: int = 0):
    prepared = DATASETS[dataset].prepare(cache_dir(), shared_data_dir(), fold)
    collection = json.loads((run_dir / "annotations.geojson").read_text())
    parsed = parse_annotations(
        collection,
        classes=prepared.classes,
        image_crs_wkt=prepared.meta["crs_wkt"],
        image_bounds=tuple(prepared.meta["bounds"]),
    )
    detector = load_detector(run_dir / "model.onnx")
    source = ImageSource("image", str(prepared.image), prepared.meta)
    areas = []
    classes = detector.spec.class_channels  # a box head's distances follow the classes
    for area in parsed.accuracy:
        _, probabilities, transform = predict_area(detector, source, area)
        areas.append((area, parsed.labels_in(area), probabilities, transform))
    for area in parsed.training:
        _, probabilities, transform = predict_area(detector, source, area)
        labels = parsed.labels_in(area)
        pixel_shares("training", area, labels, probabilities[:classes], transform)
    for area, labels, probabilities, transform in areas:
        pixel_shares("accuracy", area, labels, probabilities[:classes], transform)
    return prepared, detector.spec, source, areas


def pixel_shares(role, area, labels, probabilities, transform):
    """Share of pixels predicted as the class in the labels' inscribed ellipses, in the box
    corners outside them, and in the background (outside every box)."""
    shape = probabilities.shape[1:]

    def raster(geometries):
        pairs = [(g, 1) for g in geometries]
        return rasterize(pairs, out_shape=shape, transform=transform) > 0 if pairs else None

    inside = raster([area.geometry])
    boxes = raster([lab.geometry for lab in labels])
    ellipses = raster([_inscribed_ellipse(lab.geometry) for lab in labels])
    found = probabilities[1:].argmax(axis=0) + 1 == 1
    found &= probabilities.argmax(axis=0) > 0
    shares = {
        "ellipses": found[ellipses & inside].mean(),
        "corners": found[boxes & ~ellipses & inside].mean(),
        "background": found[~boxes & inside].mean(),
    }
    print(role, "share predicted:", ", ".join(f"{k} {v:.2f}" for k, v in shares.items()))


def boxes_of(objects):
    return [box(*o.geometry.bounds) for o in objects]


def keep_in(area):
    import shapely.prepared

    prepared = shapely.prepared.prep(area.geometry)
    return lambda polygon: prepared.contains(polygon.representative_point())


def score(areas, spec, mpu, variant=None):
    tp = fp = fn = 0
    details = []
    for area, labels, probabilities, transform in areas:
        probs = probabilities if variant is None else variant(probabilities)
        objects = extract_objects(probs, transform, spec, keep=keep_in(area), metres_per_unit=mpu)
        predicted = boxes_of(objects)
        truth = [lab.geometry for lab in labels]
        pairs = matched_pairs(predicted, truth, 0.5)
        tp += len(pairs)
        fp += len(predicted) - len(pairs)
        fn += len(truth) - len(pairs)
        details.append((predicted, truth, pairs))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return f1, tp, fp, fn, details


def analyse(details):
    rows = []
    for predicted, truth, _pairs in details:
        for t in truth:
            best, best_iou = None, 0.0
            for p in predicted:
                union = p.union(t).area
                iou = p.intersection(t).area / union if union else 0.0
                if iou > best_iou:
                    best, best_iou = p, iou
            if best is None:
                rows.append((best_iou, np.nan, np.nan, np.nan, np.nan))
                continue
            tw, th = t.bounds[2] - t.bounds[0], t.bounds[3] - t.bounds[1]
            pw, ph = best.bounds[2] - best.bounds[0], best.bounds[3] - best.bounds[1]
            dx = (best.centroid.x - t.centroid.x) / tw
            dy = (best.centroid.y - t.centroid.y) / th
            rows.append((best_iou, pw / tw, ph / th, dx, dy))
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--dataset", default="neon-osbs029")
    parser.add_argument("--fold", type=int, default=0, help="the run's fold (RUN_DIR ends -fN-sS)")
    args = parser.parse_args()
    prepared, spec, source, areas = load(args.run_dir, args.dataset, args.fold)
    mpu = source.meta["gsd"] / source.meta["resolution"][0]
    f1, tp, fp, fn, details = score(areas, spec, mpu)
    print(f"served: F1 {f1:.3f} tp {tp} fp {fp} fn {fn}")
    rows = analyse(details)
    np.set_printoptions(precision=2, suppress=True, linewidth=120)
    print("per label: best IoU, width ratio, height ratio, dx/w, dy/h")
    for r in rows[np.argsort(rows[:, 0])]:
        print("  ", r)
    ok = ~np.isnan(rows[:, 1])
    print("median width ratio", np.median(rows[ok, 1]), "height ratio", np.median(rows[ok, 2]))
    print("area ratio median", np.median(rows[ok, 1] * rows[ok, 2]))

    for threshold in (0.3, 0.4, 0.5, 0.6, 0.7):
        s = dataclasses.replace(spec, score_threshold=threshold)
        f1, tp, fp, fn, d = score(areas, s, mpu)
        r = analyse(d)
        ok = ~np.isnan(r[:, 1])
        print(
            f"threshold {threshold}: F1 {f1:.3f} tp {tp} fp {fp} fn {fn}, "
            f"median size ratio {np.median(r[ok, 1]):.2f} x {np.median(r[ok, 2]):.2f}"
        )
    # the instance separation's split ratio (0.99: one object per connected component)
    import inference.objects as objects_module

    saved = objects_module.SPLIT_RATIO
    for ratio in (0.15, 0.25, 0.35, 0.5, 0.99):
        objects_module.SPLIT_RATIO = ratio
        f1, tp, fp, fn, _ = score(areas, spec, mpu)
        print(f"split ratio {ratio}: F1 {f1:.3f} tp {tp} fp {fp} fn {fn}")
    objects_module.SPLIT_RATIO = saved


if __name__ == "__main__":
    main()
