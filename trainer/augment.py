"""Geometric and radiometric augmentation of training chips.

A few dozen labels in one small area are memorised in a few hundred steps (a 240 s run on NEON
crowns drives the loss to 0.003), so each chip is a new view: rotated by any angle, zoomed,
mirrored, and re-lit, so the model has to learn what a crown looks like rather than where the
training crowns are and how bright they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from trainer.loop import IGNORE


@dataclass(frozen=True)
class View:
    """Where a chip is taken from: its centre (row, col) in the area, turn, zoom, mirror."""

    row: float
    col: float
    angle: float  # radians
    zoom: float  # > 1: the chip covers more ground (objects look smaller)
    mirror: bool


def random_view(row: float, col: float, rng: np.random.Generator, zoom: float, any_angle: bool):
    """A view centred at (row, col): any angle (or a quarter turn), log-uniform zoom in
    [1/zoom, zoom], mirrored half the time."""
    angle = rng.uniform(0, 2 * math.pi) if any_angle else rng.integers(4) * math.pi / 2
    scale = math.exp(rng.uniform(-math.log(zoom), math.log(zoom))) if zoom > 1 else 1.0
    return View(row, col, angle, scale, bool(rng.random() < 0.5))


def warp(x: np.ndarray, y: np.ndarray, view: View, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The size x size chip of (bands, H, W) pixels and (H, W) target seen through `view`:
    pixels bilinear (0, the standardised mean, outside the area), target nearest (IGNORE
    outside, so padding teaches nothing)."""
    coords = _sample_positions(view, size)
    chip = np.stack(
        [ndimage.map_coordinates(band, coords, order=1, cval=0.0) for band in x]
    ).astype(np.float32)
    target = ndimage.map_coordinates(y, coords, order=0, cval=IGNORE).astype(y.dtype)
    return chip, target


def _sample_positions(view: View, size: int) -> np.ndarray:
    """(2, size, size): the area's (row, col) each chip pixel samples."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    v, u = np.meshgrid(offsets, offsets)  # u: chip rows, v: chip columns
    if view.mirror:
        v = -v
    cos, sin = math.cos(view.angle) * view.zoom, math.sin(view.angle) * view.zoom
    return np.stack([view.row + cos * u - sin * v, view.col + sin * u + cos * v])


def chip_points(points: np.ndarray, view: View, size: int) -> np.ndarray:
    """(row, col) positions in the area, as `warp` indexes it, to (row, col) in its chip: the
    inverse of warp's mapping (points outside the chip fall outside 0..size - 1)."""
    cos, sin = math.cos(view.angle) * view.zoom, math.sin(view.angle) * view.zoom
    d_row, d_col = points[:, 0] - view.row, points[:, 1] - view.col
    scale = cos * cos + sin * sin
    u = (cos * d_row + sin * d_col) / scale
    v = (-sin * d_row + cos * d_col) / scale
    if view.mirror:
        v = -v
    centre = (size - 1) / 2
    return np.stack([u + centre, v + centre], axis=1)


def relight(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast, colour balance, saturation, blur and noise (standardised input):
    other dates, sensors and sun angles look different. `strength` 1 is the default range."""
    bands = x.shape[0]
    gain = rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength)
    bias = rng.uniform(-0.4 * strength, 0.4 * strength)
    balance = rng.uniform(1 - 0.1 * strength, 1 + 0.1 * strength, size=(bands, 1, 1))
    shift = rng.uniform(-0.1 * strength, 0.1 * strength, size=(bands, 1, 1))
    out = x * (gain * balance) + (bias + shift)
    if bands > 1:  # saturation: towards or away from the grey of each pixel
        grey = out.mean(axis=0, keepdims=True)
        out = grey + (out - grey) * rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength)
    if rng.random() < 0.3 * min(strength, 1.0):
        sigma = rng.uniform(0.3, 1.0)
        out = np.stack([ndimage.gaussian_filter(band, sigma) for band in out])
    out = out + rng.normal(0.0, 0.05, size=out.shape)
    return out.astype(np.float32)
