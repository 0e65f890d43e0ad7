"""The training loop shared by the demo detector and detectors trained from annotations:
AdamW, warm-up then cosine decay fitted to a wall-clock budget, cross-entropy plus soft Dice,
pixels marked IGNORE (outside every training area) left out of both."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from trainer.targets import BORDER

IGNORE = 255  # target value of pixels that teach nothing (outside training areas)


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of one training run; the defaults are the recipe chosen on the experiment suite's
    means over folds and seeds (README, "What won")."""

    # "efficientnet_lite0"/"_lite1": an ImageNet-trained encoder with a U-Net decoder
    # (trainer.network.PretrainedUNet); "unet": the small U-Net from scratch, `widths` wide.
    network: str = "efficientnet_lite0"
    encoder_lr: float = 0.3  # the pretrained encoder's learning rate, relative to peak_lr
    # What standardises the input: "image", each band's mean and std over the training areas;
    # "pretrained", the encoder's own ((x - 0.5) / 0.5 of 8-bit values, as EfficientNet-Lite
    # was trained; "image" where the data are not 8-bit).
    input_norm: str = "image"
    widths: tuple[int, ...] = (24, 48, 64, 96)  # "unet": channels per level, from 1/2 to 1/16
    chip: int = 128  # px; small chips buy more steps, which matter more than context here
    batch: int = 8
    peak_lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: float = 0.08  # fraction of the run spent ramping the learning rate up
    object_chips: float = 0.5  # share of chips centred on an object rather than anywhere
    weight_power: float = 0.25  # cross-entropy class weight = (1 / frequency) ** power
    dice: float = 1.0  # weight of the soft-Dice term added to the cross-entropy
    density: float = 2.0  # objects per km² in training scenes, relative to the demo scene
    # Touching labels of a class are parted by a gap about 2r px wide (0: a 1-px line), whose
    # pixels weigh border_weight times the others: the model learns to leave a valley between
    # touching crowns. Synthetic trees, 600 steps: F1 0.58 (0, 1) -> 0.68 (1, 1) -> 0.97 (1, 3);
    # NEON crowns 0.12 -> 0.46 with (2, 3) (README, "What we tried").
    gap_radius: int = 2
    border_weight: float = 3.0
    # What a box label trains as: "box" (its rectangle) or "ellipse" (its inscribed ellipse,
    # corners ignored: a box round a crown holds ground in its corners; trainer.data).
    box_targets: str = "box"
    # Each label trains as its core, shrunk by area * (1 - r²) / perimeter (DBNet's shrink,
    # r = core_ratio; 1: the whole label), the ring around it as background, so touching
    # objects are apart by construction; the detector grows what it finds back by the same
    # amount (DetectorSpec.expand_ratio). NEON crowns, 240 s: 0.43 -> 0.57 / 0.48 (seeds 0, 1).
    core_ratio: float = 0.5
    # Augmentation: "heavy" (trainer.augment) views each chip at any angle and a zoom in
    # [1/zoom, zoom], mirrored, re-lit with `relight` strength; "light" is the first sampler
    # (quarter turns, flips, brightness/contrast). With cores, NEON 240 s: 0.72 / 0.63.
    augment: str = "heavy"
    zoom: float = 1.3
    relight: float = 1.0
    # Where every label is a box: the network also regresses, at each core pixel, the distances
    # to its label's box edges (FCOS), and objects are the boxes their pixels agree on
    # (inference.objects): fragments of a crown give one box, crowns merged in the mask two.
    # NEON, 780 steps, 3 seeds x 2 folds: OSBS_029 F1 0.484 against 0.449 without (README).
    box_head: bool = True
    box_weight: float = 1.0  # weight of the box IoU loss next to cross-entropy + Dice


@dataclass(frozen=True)
class TrainProgress:
    step: int
    loss: float  # smoothed
    fraction: float  # of the budget (time or steps) used
    elapsed: float  # seconds
    seconds_left: float


class Sampler(Protocol):
    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """Chips (N, bands, H, W) and class targets (N, H, W); for a box head also the box
        distances to learn (N, 4, H, W), NaN where none."""
        ...


def learning_rate(progress: float, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to zero over `progress` 0..1 of the budget."""
    if progress < config.warmup:
        return config.peak_lr * max(progress / config.warmup, 0.02)
    fraction = (progress - config.warmup) / (1.0 - config.warmup)
    return config.peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice, averaged over the object classes: rewards overlap directly, so scattered
    false positives on roads cost as much as missed roofs. IGNORE pixels count for nothing."""
    valid = (target != IGNORE).unsqueeze(1)
    safe = torch.where(target == IGNORE, torch.zeros_like(target), target)
    probabilities = torch.softmax(logits, dim=1)[:, 1:] * valid
    onehot = nn.functional.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:] * valid
    overlap = (probabilities * onehot).sum(dim=(0, 2, 3))
    total = probabilities.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2.0 * overlap + 1.0) / (total + 1.0)).mean()


def box_distances(raw: torch.Tensor) -> torch.Tensor:
    """The box head's outputs as distances in pixels (positive; about 7 px at zero, the size
    of a small crown's half-width, so training starts near the objects' scale)."""
    return torch.exp(raw.clamp(-8.0, 6.0) + 2.0)


def box_iou_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - IoU of the boxes a pixel predicts and its label's (both as distances from the pixel,
    UnitBox / FCOS), averaged over the pixels that have a label box (target not NaN)."""
    taught = ~torch.isnan(target[:, 0])
    if not bool(taught.any()):
        return predicted.sum() * 0.0
    p = predicted.permute(1, 0, 2, 3)[:, taught]  # (4, pixels): top, left, bottom, right
    t = target.permute(1, 0, 2, 3)[:, taught]
    area_p = (p[0] + p[2]) * (p[1] + p[3])
    area_t = (t[0] + t[2]) * (t[1] + t[3])
    height = torch.minimum(p[0], t[0]) + torch.minimum(p[2], t[2])
    width = torch.minimum(p[1], t[1]) + torch.minimum(p[3], t[3])
    overlap = height * width
    return (1.0 - overlap / (area_p + area_t - overlap)).mean()


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor,
    border: torch.Tensor,
    border_weight: float,
) -> torch.Tensor:
    """Class-weighted cross-entropy, with pixels between touching objects counted
    `border_weight` times (the U-Net paper's separation weight); equals torch's weighted mean
    when border_weight is 1."""
    if border_weight == 1.0:  # the plain loss, bit for bit (fixed-step builds stay identical)
        return nn.functional.cross_entropy(
            logits, target, weight=class_weights, ignore_index=IGNORE
        )
    per_pixel = nn.functional.cross_entropy(
        logits, target, weight=class_weights, ignore_index=IGNORE, reduction="none"
    )
    valid = target != IGNORE
    safe = torch.where(valid, target, torch.zeros_like(target))
    emphasis = torch.where(border, border_weight, 1.0)
    normaliser = (class_weights[safe] * emphasis * valid).sum().clamp_min(1e-6)
    return (per_pixel * emphasis).sum() / normaliser


def train(
    net: nn.Module,
    sampler: Sampler,
    weights: torch.Tensor,
    config: TrainConfig,
    *,
    seconds: float,
    seed: int,
    steps: int | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> tuple[int, float]:
    """Train until the time budget (or a fixed step count, for exact reruns) is spent.

    The schedule follows the fraction of the budget used, so whatever the machine's speed the
    run warms up, peaks and decays fully. Returns the step count and the last smoothed loss.
    """
    rng = np.random.default_rng(seed)
    groups = (
        net.parameter_groups(config.encoder_lr)
        if hasattr(net, "parameter_groups")
        else [{"params": list(net.parameters()), "lr_scale": 1.0}]
    )
    optimiser = torch.optim.AdamW(groups, lr=0.0, weight_decay=config.weight_decay)
    net.train()
    start, step, smoothed = time.perf_counter(), 0, float("nan")
    while True:
        elapsed = time.perf_counter() - start
        done = step / steps if steps else elapsed / seconds
        if done >= 1.0:
            break
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(done, config) * group["lr_scale"]
        x, y, *boxes = sampler.batch(rng)
        logits = net(x)
        if boxes:  # the channels after the classes are the box head's
            logits, raw = logits[:, : len(weights)], logits[:, len(weights) :]
        border = y == BORDER
        y = torch.where(border, torch.zeros_like(y), y)
        loss = weighted_cross_entropy(logits, y, weights, border, config.border_weight)
        loss = loss + config.dice * dice_loss(logits, y)
        if boxes:
            loss = loss + config.box_weight * box_iou_loss(box_distances(raw), boxes[0])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        value = float(loss.detach())
        smoothed = value if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * value
        step += 1
        if progress is not None:
            left = elapsed / done * (1 - done) if done > 0 else float(seconds)
            progress(TrainProgress(step, smoothed, min(done, 1.0), elapsed, max(0.0, left)))
    return step, smoothed
