"""Inference speed of each network the trainer can build, through onnxruntime on this machine.

Speed does not depend on the weights, so each network is exported as built (the pretrained ones
with their ImageNet encoder) and run on random input in the two shapes serving uses: a display
window (`WINDOW_CORE_PX` plus both context margins, what detection tiles compute) and a region
chunk (`REGION_CHUNK_PX` plus margins, what exports compute). Figures are megapixels of kept
output (window cores, chunk cores) per second, one call at a time on every core; the ratio to
the from-scratch U-Net is measured in the same run.

    python -m bench.network_speed [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.common import machine, write_results
from trainer.network import (
    CONTEXT_PX,
    NETWORKS,
    REGION_CHUNK_PX,
    WINDOW_CORE_PX,
    build_network,
    export_onnx,
)


def seconds_per_call(session: ort.InferenceSession, side: int, repeats: int) -> float:
    """Median wall time of one (1, 3, side, side) call, after one warm-up call."""
    x = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    session.run(None, {"input": x})
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure(repeats: int) -> dict:
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-network-") as folder:
        for name in NETWORKS:
            torch.manual_seed(0)
            path = Path(folder) / f"{name}.onnx"
            export_onnx(build_network(name, (24, 48, 64, 96), classes=2, bands=3), path)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            margin = CONTEXT_PX[name]
            window = seconds_per_call(session, WINDOW_CORE_PX + 2 * margin, repeats)
            chunk = seconds_per_call(session, REGION_CHUNK_PX + 2 * margin, repeats)
            figures[name] = {
                "context_px": margin,
                "window_s": round(window, 4),
                "window_core_mpx_s": round(WINDOW_CORE_PX**2 / window / 1e6, 3),
                "chunk_s": round(chunk, 4),
                "chunk_core_mpx_s": round(REGION_CHUNK_PX**2 / chunk / 1e6, 3),
            }
    baseline = figures["unet"]
    for entry in figures.values():
        entry["window_vs_unet"] = round(
            entry["window_core_mpx_s"] / baseline["window_core_mpx_s"], 3
        )
        entry["chunk_vs_unet"] = round(entry["chunk_core_mpx_s"] / baseline["chunk_core_mpx_s"], 3)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    figures = measure(args.repeats)
    for name, entry in figures.items():
        print(
            f"network_speed {name}: window {entry['window_core_mpx_s']} Mpx/s "
            f"({entry['window_vs_unet']}x unet), region chunk {entry['chunk_core_mpx_s']} Mpx/s "
            f"({entry['chunk_vs_unet']}x unet), context {entry['context_px']} px",
            flush=True,
        )
    write_results("network_speed", {"machine": machine(), "networks": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
