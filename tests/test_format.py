"""The detector format's `tiledetect_output_shape` and `tiledetect_box_regression`: written, read
back, optional for older files, and refused when they promise what the model cannot give."""

from __future__ import annotations

import dataclasses

import pytest

from inference.errors import InvalidDetectorError
from inference.format import DetectorSpec, spec_from_metadata, spec_to_metadata

SPEC = DetectorSpec(
    model_type="Segmentor",
    class_names=("tree",),
    resolution_m=0.1,
    tile_size=512,
    overlap_px=96,
)


def test_output_shape_round_trips():
    boxes = dataclasses.replace(SPEC, output_shape="box")
    assert spec_from_metadata(spec_to_metadata(boxes)).as_dict() == boxes.as_dict()
    assert spec_from_metadata(spec_to_metadata(SPEC)).output_shape == "polygon"


def test_a_detector_without_the_key_returns_outlines():
    metadata = spec_to_metadata(SPEC)
    del metadata["tiledetect_output_shape"]
    assert spec_from_metadata(metadata).output_shape == "polygon"


def test_an_unknown_output_shape_is_refused():
    metadata = spec_to_metadata(SPEC) | {"tiledetect_output_shape": '"ellipse"'}
    with pytest.raises(InvalidDetectorError, match="tiledetect_output_shape must be one of"):
        spec_from_metadata(metadata)


def test_box_regression_round_trips_and_must_be_a_box_detector():
    regressed = dataclasses.replace(SPEC, output_shape="box", box_regression=True)
    back = spec_from_metadata(spec_to_metadata(regressed))
    assert back.box_regression and back.channels == 2 + 4 and back.class_channels == 2
    assert not spec_from_metadata(spec_to_metadata(SPEC)).box_regression  # older files: off
    # Its objects reach beyond the pixels it marks: tiles paint objects, not probabilities.
    assert back.objects_outgrow_pixels and not SPEC.objects_outgrow_pixels
    outlines = spec_to_metadata(SPEC) | {"tiledetect_box_regression": "true"}
    with pytest.raises(InvalidDetectorError, match='must have output_shape "box"'):
        spec_from_metadata(outlines)
    vague = spec_to_metadata(regressed) | {"tiledetect_box_regression": '"yes"'}
    with pytest.raises(InvalidDetectorError, match="must be true or false"):
        spec_from_metadata(vague)


def test_a_box_regression_detector_without_its_boxes_output_is_refused(tmp_path):
    """Metadata that promises box distances on a model returning only probabilities."""
    import onnx
    import torch

    from inference.format import embed_spec
    from inference.session import load_detector

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Softmax(dim=1)).eval()
    path = tmp_path / "one-output.onnx"
    axes = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(
        net, torch.zeros(1, 3, 32, 32), path, input_names=["input"],
        output_names=["probabilities"], dynamic_axes={"input": axes, "probabilities": axes},
        dynamo=False,
    )  # fmt: skip
    onnx.checker.check_model(onnx.load(path))
    embed_spec(path, dataclasses.replace(SPEC, output_shape="box", box_regression=True))
    with pytest.raises(InvalidDetectorError, match="second output of 4 box distances"):
        load_detector(path)
