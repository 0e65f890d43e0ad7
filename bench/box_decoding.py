"""Object extraction for box detectors: regressed boxes (a box head's, `spec.box_regression`)
against grown cores' bounding boxes, on the same dense crowns.

One export cell's worth of raster (2048 px at 0.1 m) holding a grid of crown cores 8-14 px in
radius, 45 px apart with jitter (about 2000 crowns: a dense conifer stand), whose pixels all
predict their crown's box. Both ways find every crown; the figure is seconds per cell (median of
the repeats) and the ratio, measured in the same run.

    python -m bench.box_decoding [--repeats N]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
from affine import Affine

from bench.common import machine, write_results
from inference.format import DetectorSpec
from inference.objects import extract_objects
from trainer.data import expand_ratio_for

SIDE_PX = 2048
RESOLUTION_M = 0.1
SPACING_PX = 45
SPEC = DetectorSpec(
    model_type="Segmentor",
    class_names=("tree",),
    resolution_m=RESOLUTION_M,
    tile_size=512,
    overlap_px=96,
    min_area_m2=0.5,
    output_shape="box",
)


def dense_crowns(seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Class probabilities (2, H, W) of crown cores, their box distances (4, H, W), the count."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIDE_PX, 0:SIDE_PX] + 0.5
    field = np.full((SIDE_PX, SIDE_PX), -10.0)
    distances = np.full((4, SIDE_PX, SIDE_PX), 5.0, np.float32)
    count = 0
    for row in range(30, SIDE_PX - 30, SPACING_PX):
        for col in range(30, SIDE_PX - 30, SPACING_PX):
            y, x = row + rng.uniform(-5, 5), col + rng.uniform(-5, 5)
            radius = rng.uniform(8, 14)
            near = np.s_[int(y - 25) : int(y + 25), int(x - 25) : int(x + 25)]
            depth = radius - np.hypot(rows[near] - y, cols[near] - x)
            field[near] = np.maximum(field[near], depth)
            inside = depth > 0
            half = radius * 1.6  # the crown round its core
            edges = (y - half, x - half, y + half, x + half)
            for channel, value in enumerate(
                [rows[near] - edges[0], cols[near] - edges[1], edges[2] - rows[near],
                 edges[3] - cols[near]]
            ):  # fmt: skip
                distances[channel][near][inside] = value[inside]
            count += 1
    crown = 1.0 / (1.0 + np.exp(-field))
    return np.stack([1.0 - crown, crown]).astype(np.float32), distances, count


def seconds(raster: np.ndarray, spec: DetectorSpec, repeats: int) -> tuple[float, int]:
    transform = Affine(RESOLUTION_M, 0, 0, 0, -RESOLUTION_M, 0)
    times, found = [], 0
    for _ in range(repeats):
        began = time.perf_counter()
        found = len(extract_objects(raster, transform, spec))
        times.append(time.perf_counter() - began)
    return statistics.median(times), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    probabilities, distances, crowns = dense_crowns()
    grown = dataclasses.replace(SPEC, expand_ratio=expand_ratio_for(0.5))
    regressed = dataclasses.replace(SPEC, box_regression=True)
    core_s, core_found = seconds(probabilities, grown, args.repeats)
    box_s, box_found = seconds(np.concatenate([probabilities, distances]), regressed, args.repeats)
    ratio = box_s / core_s
    print(f"box_decoding: {crowns} crowns in a {SIDE_PX} px cell")
    print(f"  grown cores' boxes: {core_s:.2f} s, {core_found} objects")
    print(f"  regressed boxes:    {box_s:.2f} s, {box_found} objects ({ratio:.2f}x)")
    write_results(
        "box_decoding",
        {
            "machine": machine(),
            "crowns": crowns,
            "side_px": SIDE_PX,
            "grown_cores_seconds": round(core_s, 3),
            "grown_cores_objects": core_found,
            "regressed_seconds": round(box_s, 3),
            "regressed_objects": box_found,
            "regressed_over_grown": round(ratio, 3),
        },
    )


if __name__ == "__main__":
    main()
