"""The segmentation networks tiledetect trains, and their export to ONNX.

`PretrainedUNet` (the default): an ImageNet-trained EfficientNet-Lite encoder (trainer.encoder)
with a light U-Net decoder and a full-resolution refinement. `SegmentationNet`: the small U-Net
trained from scratch that came first (`TrainConfig(network="unet")`). Both take any input whose
sides are multiples of 16 and are exported with the softmax inside (Deepness segmentors return
probabilities), dynamic batch and size.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.loop import box_distances

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


def conv_unit(cin: int, cout: int) -> nn.Sequential:
    """One 3x3 conv + BatchNorm + ReLU: the decoder's unit (one, not two, per level keeps the
    receptive field inside the windows' context margin)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class PretrainedUNet(nn.Module):
    """EfficientNet-Lite features at 1/2 .. 1/16, merged back up to full resolution.

    Each decoder level upsamples (nearest), concatenates the encoder's features of that scale and
    applies one conv unit; the last layer sees the input again at full resolution to place
    outlines and the gaps between touching crowns, as SegmentationNet's does. Its receptive
    field reaches 89 px each way (lite0): the 96 px context margin of each window covers it.
    """

    def __init__(
        self,
        classes: int,
        bands: int = 3,
        encoder: str = "efficientnet_lite0",
        decoder: Sequence[int] = (64, 48, 32),
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        from trainer.encoder import EfficientNetLiteEncoder, load_pretrained

        self.encoder = EfficientNetLiteEncoder(encoder, bands)
        if pretrained:
            load_pretrained(self.encoder)
        skips = list(reversed(self.encoder.channels[:-1]))  # 1/8, 1/4, 1/2
        cin = self.encoder.channels[-1]
        self.merge = nn.ModuleList()
        for skip, width in zip(skips, decoder, strict=True):
            self.merge.append(conv_unit(cin + skip, width))
            cin = width
        self.fine = nn.Sequential(
            nn.Conv2d(cin + bands, FINE_WIDTH, 3, padding=1, bias=False),
            nn.BatchNorm2d(FINE_WIDTH),
            nn.ReLU(inplace=True),
            nn.Conv2d(FINE_WIDTH, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised (N, bands, H, W), H and W multiples of 16 -> logits (N, classes, H, W)."""
        features = self.encoder(x)
        out = features[-1]
        for merge, skip in zip(self.merge, reversed(features[:-1]), strict=True):
            out = merge(torch.cat([_upsampled(out), skip], dim=1))
        return self.fine(torch.cat([_upsampled(out), x], dim=1))

    def parameter_groups(self, encoder_lr: float) -> list[dict]:
        """The encoder's parameters learn at `encoder_lr` times the rate of the new layers:
        fine-tuning keeps what ImageNet taught while the decoder starts from nothing."""
        encoder = list(self.encoder.parameters())
        own = {id(p) for p in encoder}
        rest = [p for p in self.parameters() if id(p) not in own]
        return [{"params": encoder, "lr_scale": encoder_lr}, {"params": rest, "lr_scale": 1.0}]


def _upsampled(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")


NETWORKS = ("efficientnet_lite0", "efficientnet_lite1", "unet")
# Context margin (px each side of a window) that covers each network's receptive field, so
# windows give the same probabilities as one inference over their union (no seams). Measured
# reach of one output pixel's gradient: lite0 89 px, lite1 125 px, unet 93 px
# (tests/test_encoder.py checks it); multiples of 16, the networks' total stride.
CONTEXT_PX = {"efficientnet_lite0": 96, "efficientnet_lite1": 128, "unet": 96}
WINDOW_CORE_PX = 320  # the part of each window kept; the window is this plus both margins


def build_network(network: str, widths: Sequence[int], classes: int, bands: int) -> nn.Module:
    """The network a TrainConfig names: a pretrained EfficientNet-Lite U-Net, or "unet"."""
    if network == "unet":
        return SegmentationNet(widths, classes=classes, bands=bands)
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {network!r}")
    return PretrainedUNet(classes, bands, encoder=network)


class WithSoftmax(nn.Module):
    """What gets exported: per-class probabilities, as Deepness segmentors return, and with a box
    head (`classes` given: the net's channels after the first `classes`) the box distances."""

    def __init__(self, net: nn.Module, classes: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        if self.classes is None:
            return torch.softmax(out, dim=1)
        logits, raw = out[:, : self.classes], out[:, self.classes :]
        return torch.softmax(logits, dim=1), box_distances(raw)


# torch's TorchScript exporter keeps its state in module globals (two exports at once fail with
# "GLOBALS.in_onnx_export must be False"), and a Dask worker runs trainings in parallel threads.
_EXPORT_LOCK = threading.Lock()


def export_onnx(net: nn.Module, path: Path, bands: int = 3, box_classes: int | None = None) -> None:
    """ONNX with softmax inside and dynamic N, H, W; no normalisation in the graph. With a box
    head (`box_classes`: the class channels, background included) a second output, `boxes`."""
    model = WithSoftmax(net, box_classes).eval()
    example = torch.zeros(1, bands, 128, 128)
    axes = {0: "batch", 2: "height", 3: "width"}
    outputs = ["probabilities"] if box_classes is None else ["probabilities", "boxes"]
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
            output_names=outputs,
            dynamic_axes={"input": axes} | {name: axes for name in outputs},
        )


def onnx_torch_difference(
    net: nn.Module, path: Path, chips: torch.Tensor, box_classes: int | None = None
) -> float:
    """Largest absolute difference between the ONNX file's and torch's outputs (box distances,
    in pixels, relative to their size)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = WithSoftmax(net, box_classes).eval()(chips)
    expected = (expected,) if isinstance(expected, torch.Tensor) else expected
    actual = session.run(None, {"input": chips.numpy()})
    differences = [np.abs(actual[0] - expected[0].numpy()).max()]
    if len(expected) > 1:
        boxes = expected[1].numpy()
        differences.append((np.abs(actual[1] - boxes) / np.maximum(boxes, 1.0)).max())
    return float(max(differences))
