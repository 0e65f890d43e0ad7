"""The detector format's `tiledetect_output_shape`: written, read back, optional for older
files, and refused when it names a shape the post-processing cannot give."""

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
