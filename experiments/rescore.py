"""Score saved experiment runs again with today's post-processing (no retraining), optionally
with `inference.objects` constants changed, to compare how objects are made from the same
probabilities: mean ± sd of F1 at IoU 0.5 and 0.4 per dataset.

    PYTHONPATH=$PWD python experiments/rescore.py RUNS_DIR [--set SPLIT_SHARE=0.25 ...]

RUNS_DIR holds run folders named DATASET-LABELS-fFOLD-sSEED (model.onnx + annotations.geojson),
as `tiledetect experiments run` leaves them under .cache/experiments/runs/.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import inference.objects
from inference.session import load_detector
from trainer.annotations import parse_annotations
from trainer.data import ImageSource
from trainer.evaluate import score_areas
from trainer.experiments import (
    DATASETS,
    cache_dir,
    make_annotations,
    shared_data_dir,
    truth_objects,
)

RUN_NAME = re.compile(r"(?P<dataset>.+)-(?P<labels>\d+)-f(?P<fold>\d+)-s(?P<seed>\d+)$")


def rescore(run_dir: Path) -> tuple[str, dict]:
    match = RUN_NAME.match(run_dir.name)
    if match is None:
        raise ValueError(f"{run_dir.name} is not a run folder name")
    dataset, fold, labels = match["dataset"], int(match["fold"]), int(match["labels"])
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
    if prepared.score_image is not None:  # a cross-image run: scored on the other image
        labelled = make_annotations(prepared, truth_objects(prepared), labels)
        parsed = labelled.score_annotations
        source = ImageSource("score", str(prepared.score_image), prepared.score_meta)
    labels_in = {area.index: parsed.labels_in(area) for area in parsed.accuracy}
    scores = score_areas(detector, source, parsed.accuracy, labels_in)
    metrics = scores.as_dict(list(prepared.classes))
    return dataset, {"f1": metrics["object"]["f1"], "f1_iou40": metrics["object_iou40"]["f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--set", action="append", default=[], help="inference.objects NAME=VALUE")
    args = parser.parse_args()
    for item in args.set:
        name, _, value = item.partition("=")
        setattr(inference.objects, name, type(getattr(inference.objects, name))(value))
    by_dataset: dict[str, list[dict]] = {}
    for run_dir in sorted(p for p in args.runs.iterdir() if (p / "model.onnx").exists()):
        dataset, scores = rescore(run_dir)
        by_dataset.setdefault(dataset, []).append(scores)
        print(f"{run_dir.name}: F1 {scores['f1']:.3f}, F1@0.4 {scores['f1_iou40']:.3f}")
    for dataset, rows in by_dataset.items():
        summary = []
        for key in ("f1", "f1_iou40"):
            values = [r[key] for r in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary.append(f"{key} {statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"{dataset} ({len(rows)} runs): {', '.join(summary)}")


if __name__ == "__main__":
    main()
