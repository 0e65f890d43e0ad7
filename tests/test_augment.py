"""Chip views of the heavy sampler (trainer.augment): the warp puts pixels and target where the
view says, and padding outside an area teaches nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.augment import View, random_view, relight, warp
from trainer.loop import IGNORE


def area(height: int = 40, width: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, height, width)).astype(np.float32)
    y = rng.integers(0, 3, (height, width)).astype(np.uint8)
    return x, y


def test_an_upright_view_is_the_crop():
    x, y = area()
    # 16 px centred between pixels 11 and 12 (row) and 29 and 30 (column).
    chip, target = warp(x, y, View(11.5, 29.5, 0.0, 1.0, False), 16)
    np.testing.assert_allclose(chip, x[:, 4:20, 22:38], atol=1e-5)
    np.testing.assert_array_equal(target, y[4:20, 22:38])


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_quarter_turns_and_mirrors_are_exact(turns: int):
    x, y = area()
    crop_x, crop_y = x[:, 4:20, 22:38], y[4:20, 22:38]
    chip, target = warp(x, y, View(11.5, 29.5, turns * math.pi / 2, 1.0, False), 16)
    # Turning the view by +90 degrees shows the crop turned by -90 degrees.
    np.testing.assert_array_equal(target, np.rot90(crop_y, -turns))
    np.testing.assert_allclose(chip, np.rot90(crop_x, -turns, axes=(1, 2)), atol=1e-5)
    _, mirrored = warp(x, y, View(11.5, 29.5, 0.0, 1.0, True), 16)
    np.testing.assert_array_equal(mirrored, crop_y[:, ::-1])


def test_outside_the_area_is_ignored_and_zoom_covers_more_ground():
    x, y = area()
    chip, target = warp(x, y, View(0.0, 0.0, 0.3, 1.0, False), 32)
    assert (target == IGNORE).mean() > 0.6  # centred on the corner: most of it is outside
    assert (chip[:, target == IGNORE] == 0).mean() > 0.9  # the standardised mean
    ones = np.ones((3, 40, 60), np.float32)
    labels = np.zeros((40, 60), np.uint8)
    labels[15:25, 25:35] = 1  # a 10 px square
    _, near = warp(ones, labels, View(19.5, 29.5, 0.0, 0.5, False), 32)
    _, far = warp(ones, labels, View(19.5, 29.5, 0.0, 2.0, False), 32)
    assert np.count_nonzero(near == 1) == pytest.approx(400, rel=0.1)  # 20 px across
    assert np.count_nonzero(far == 1) == pytest.approx(25, rel=0.3)  # 5 px across


def test_random_views_and_relighting_stay_in_their_ranges():
    rng = np.random.default_rng(1)
    views = [random_view(5.0, 6.0, rng, 1.3, any_angle=True) for _ in range(200)]
    zooms = np.array([v.zoom for v in views])
    assert zooms.min() >= 1 / 1.3 - 1e-9 and zooms.max() <= 1.3 + 1e-9
    assert len({round(v.angle, 3) for v in views}) > 150  # any angle, not quarter turns
    assert 60 < sum(v.mirror for v in views) < 140
    quarter = {random_view(0, 0, rng, 1.0, any_angle=False).angle for _ in range(50)}
    assert quarter <= {0.0, math.pi / 2, math.pi, 3 * math.pi / 2}
    x, _ = area()
    lit = relight(x, rng, 1.0)
    assert lit.shape == x.shape and lit.dtype == np.float32
    assert not np.allclose(lit, x)
    np.testing.assert_allclose(relight(x, np.random.default_rng(2), 0.0), x, atol=0.3)


def test_the_heavy_sampler_gives_chips_of_the_area_and_unknown_modes_are_refused():
    import dataclasses

    from trainer.data import AreaData, AreaSampler
    from trainer.loop import TrainConfig

    x, y = area()
    centres = np.array([[20, 30, 1]])
    config = dataclasses.replace(TrainConfig(), chip=32, batch=4, box_head=False)
    sampler = AreaSampler([AreaData(x, y, centres)], [x], config)
    chips, targets = sampler.batch(np.random.default_rng(0))
    assert chips.shape == (4, 3, 32, 32) and targets.shape == (4, 32, 32)
    assert set(np.unique(targets.numpy())) <= {0, 1, 2, IGNORE}
    with pytest.raises(ValueError, match="augment must be one of heavy, light"):
        AreaSampler([AreaData(x, y, centres)], [x], dataclasses.replace(config, augment="wild"))


def warped(data, view: View, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The chip's target and label numbers, as the heavy sampler warps them (in one raster)."""
    _, both = warp(data.pixels, data.instances * 256 + data.target, view, size)
    return (both % 256).astype(np.uint8), both // 256


def test_box_distances_follow_the_view():
    """A box head learns, at each core pixel of a chip, the distances to its label's box as the
    chip sees it: upright, the label's own box; turned a quarter, its sides swap; cut by the
    chip's edge, still the whole box."""
    from trainer.data import AreaData, chip_box_distances

    size = 64
    target = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.int32)
    target[13:18, 12:19] = 1  # the label's core
    instances[13:18, 12:19] = 1
    # The label's box: rows 10..20, columns 5..25 (pixel centres at integers).
    outline = np.array([[10.0, 5.0], [10.0, 25.0], [20.0, 25.0], [20.0, 5.0]])
    data = AreaData(
        np.zeros((3, size, size), np.float32), target, np.zeros((0, 3)), instances, (outline,)
    )
    centre = (size - 1) / 2
    upright = View(centre, centre, 0.0, 1.0, False)
    distances = chip_box_distances(data, *warped(data, upright, size), upright, size)
    np.testing.assert_allclose(distances[:, 15, 15], [5.0, 10.0, 5.0, 10.0])
    assert np.isnan(distances[:, 30, 30]).all() and np.isnan(distances[:, 12, 15]).all()

    turned = View(centre, centre, math.pi / 2, 1.0, False)
    distances = chip_box_distances(data, *warped(data, turned, size), turned, size)
    taught = ~np.isnan(distances[0])
    assert taught.sum() == 35
    heights = distances[0][taught] + distances[2][taught]
    widths = distances[1][taught] + distances[3][taught]
    np.testing.assert_allclose(heights, 20.0, atol=1e-6)
    np.testing.assert_allclose(widths, 10.0, atol=1e-6)

    cut = View(centre + 15, centre, 0.0, 1.0, False)  # the chip starts in the core's middle row
    distances = chip_box_distances(data, *warped(data, cut, size), cut, size)
    taught = ~np.isnan(distances[0])
    rows = np.nonzero(taught)[0]
    assert rows.min() == 0
    np.testing.assert_allclose(distances[0][taught] + distances[2][taught], 10.0, atol=1e-6)
