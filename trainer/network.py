"""The segmentation network tiledetect trains, and its export to ONNX.

A small U-Net behind a stride-2 stem with a full-resolution refinement: cheap enough to train in
minutes on two CPU cores, and any input whose sides are multiples of 16 works. Exported with the
softmax inside (Deepness segmentors return probabilities), dynamic batch and size.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

MULTIPLE = 16  # the exported model takes any H, W that are multiples of this
# Fully convolutional, BatchNorm frozen at export: region inference may feed chunks this big
# (plus the margin) and get the windows' probabilities with less context computed twice.
# Bigger is faster but costs memory: 768 px peaked at 1.3-1.5 GB with two cells at once, 640 at
# 1.1 GB (bench/export_throughput.py).
REGION_CHUNK_PX = 640
FINE_WIDTH = 16  # channels of the full-resolution refinement


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU: the U-Net unit."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegmentationNet(nn.Module):
    """A small U-Net behind a stride-2 stem, with a full-resolution refinement at the end.

    Most work happens at half resolution (cars are still 3 px wide there), which on two CPU
    cores buys about 1.6x more training steps than a full-resolution U-Net. Four levels reach
    1/16, enough context to tell a flat roof from a concrete yard; the last layer sees the input
    again at full resolution to place outlines and the gaps between touching crowns.
    """

    def __init__(self, widths: Sequence[int], classes: int, bands: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(bands, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.down = nn.ModuleList()
        cin = widths[0]
        for width in widths:
            self.down.append(conv_block(cin, width))
            cin = width
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, width, 2, stride=2))
            self.merge.append(conv_block(2 * width, width))
            cin = width
        self.to_full = nn.ConvTranspose2d(cin, FINE_WIDTH, 2, stride=2)
        self.fine = nn.Sequential(
            nn.Conv2d(FINE_WIDTH + bands, FINE_WIDTH, 3, padding=1, bias=False),
            nn.BatchNorm2d(FINE_WIDTH),
            nn.ReLU(inplace=True),
            nn.Conv2d(FINE_WIDTH, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised (N, bands, H, W), H and W multiples of 16 -> logits (N, classes, H, W)."""
        features = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            features = block(features if i == 0 else nn.functional.max_pool2d(features, 2))
            skips.append(features)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            features = merge(torch.cat([up(features), skip], dim=1))
        return self.fine(torch.cat([self.to_full(features), x], dim=1))


class WithSoftmax(nn.Module):
    """What gets exported: per-class probabilities, as Deepness segmentors return."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


# torch's TorchScript exporter keeps its state in module globals (two exports at once fail with
# "GLOBALS.in_onnx_export must be False"), and a Dask worker runs trainings in parallel threads.
_EXPORT_LOCK = threading.Lock()


def export_onnx(net: nn.Module, path: Path, bands: int = 3) -> None:
    """ONNX with softmax inside and dynamic N, H, W; no normalisation in the graph."""
    model = WithSoftmax(net).eval()
    example = torch.zeros(1, bands, 128, 128)
    axes = {0: "batch", 2: "height", 3: "width"}
    # the TorchScript exporter is deprecated; we chose it
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": axes, "probabilities": axes},
        )


def onnx_torch_difference(net: nn.Module, path: Path, chips: torch.Tensor) -> float:
    """Largest absolute difference between the ONNX file's and torch's probabilities."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = WithSoftmax(net).eval()(chips).numpy()
    (actual,) = session.run(None, {"input": chips.numpy()})
    return float(np.abs(actual - expected).max())
