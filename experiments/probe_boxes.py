"""Why a trained detector's objects miss box labels: per-label best IoU, size and offset of the
best prediction's bounding box, and the same scores under post-processing variants, all from
one probability map (no retraining).

    PYTHONPATH=$PWD python experiments/probe_boxes.py RUN_DIR [--dataset neon-osbs029]

RUN_DIR is an experiment run folder (model.onnx + annotations.geojson). The probabilities of
the accuracy areas are cached next to it (probe.npz).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from shapely.geometry import box

from inference.metrics import matched_pairs
from inference.objects import extract_objects
from inference.session import load_detector
from trainer.data import ImageSource
from trainer.evaluate import predict_area
from trainer.experiments import DATASETS, cache_dir, shared_data_dir, truth_objects
from trainer.annotations import parse_annotations


def load(run_dir: Path, dataset: str):
    prepared = DATASETS[dataset].prepare(cache_dir(), shared_data_dir())
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
    for area in parsed.accuracy:
        _, probabilities, transform = predict_area(detector, source, area)
        areas.append((area, parsed.labels_in(area), probabilities, transform))
    return prepared, detector.spec, source, areas


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
        objects = extract_objects(
            probs, transform, spec, keep=keep_in(area), metres_per_unit=mpu
        )
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
    for predicted, truth, pairs in details:
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
    args = parser.parse_args()
    prepared, spec, source, areas = load(args.run_dir, args.dataset)
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
    # no instance splitting at all: one object per connected component
    import inference.objects as objects_module

    saved = objects_module.SPLIT_RATIO
    for ratio in (0.15, 0.25, 0.35, 0.5, 0.99):
        objects_module.SPLIT_RATIO = ratio
        f1, tp, fp, fn, _ = score(areas, spec, mpu)
        print(f"split ratio {ratio}: F1 {f1:.3f} tp {tp} fp {fp} fn {fn}")
    objects_module.SPLIT_RATIO = saved
    np.savez_compressed(
        args.run_dir / "probe.npz", *[a[2] for a in areas]
    )
    _ = ndimage


if __name__ == "__main__":
    main()


# --- raster-space variants (diagnosis only) ----------------------------------------------------


def raster_instances(probabilities, threshold=0.5, min_radius_px=10.0):
    """Instances labelled in raster space with the served split (for growth variants)."""
    import inference.objects as om

    winner = om._winner(probabilities)
    mask = (winner == 1) & (probabilities[1] >= threshold)
    components, _ = ndimage.label(mask, structure=om.FOUR)
    labels = np.zeros(mask.shape, np.int32)
    count = 0
    for number, sl in enumerate(ndimage.find_objects(components), start=1):
        comp = components[sl] == number
        padded = np.pad(comp, 1)
        distance = ndimage.distance_transform_edt(padded)
        tops = (distance == ndimage.maximum_filter(distance, size=3)) & padded
        parts, n = om._split(comp, distance, tops, min_radius_px)
        labels[sl][parts > 0] = parts[parts > 0] + count
        count += n
    return labels, count


def grow(labels, pixels, allowed=None):
    """Each instance grown by `pixels` (Euclidean) into unclaimed pixels, nearest instance wins."""
    if pixels <= 0:
        return labels
    distance, (rows, cols) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    grown = labels[rows, cols]
    reach = distance <= pixels
    if allowed is not None:
        reach &= allowed
    return np.where((labels > 0) | reach, grown, 0)


def raster_score(areas, min_area_px, make):
    tp = fp = fn = 0
    for area, labels_in, probabilities, transform in areas:
        labels, count = make(probabilities)
        predicted = []
        inside = keep_in(area)
        for sl in ndimage.find_objects(labels):
            if sl is None:
                continue
            r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            x0, y0 = transform * (c0, r0)
            x1, y1 = transform * (c1, r1)
            b = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            if (r1 - r0) * (c1 - c0) < min_area_px or not inside(b):
                continue
            predicted.append(b)
        truth = [lab.geometry for lab in labels_in]
        pairs = matched_pairs(predicted, truth, 0.5)
        tp += len(pairs)
        fp += len(predicted) - len(pairs)
        fn += len(truth) - len(pairs)
    return 2 * tp / (2 * tp + fp + fn), tp, fp, fn
