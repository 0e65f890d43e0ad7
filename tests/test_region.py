"""Region inference (bulk export, training evaluation) for dynamic- and fixed-input detectors.

Models from the Deepness ecosystem are often exported with a fixed input size: a region must
then be inferred as whole windows (the last chunk padded past its context), and give the same
probabilities as a model that takes any size. Both are checked against one convolution over the
whole region, which is what chunked inference must reproduce inside the receptive field.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
import torch

from inference.errors import InvalidDetectorError
from inference.format import DetectorSpec, spec_to_metadata
from inference.reading import read_region
from inference.region import LATTICE_PX, RegionRequest, chunk_edges, infer_region
from inference.session import load_detector
from tests.conftest import write_rgb_tif

# Two 3x3 convolutions see 2 px each way: a 16 px margin is ample context.
SPEC = DetectorSpec(
    model_type="Segmentor",
    class_names=("thing",),
    resolution_m=0.5,
    tile_size=64,
    overlap_px=16,
)


def small_net() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 2, 3, padding=1),
        torch.nn.Softmax(dim=1),
    ).eval()


def export(net: torch.nn.Module, path: Path, spec: DetectorSpec, dynamic: bool) -> Path:
    axes = {"image": {0: "n", 2: "h", 3: "w"}, "probs": {0: "n", 2: "h", 3: "w"}}
    torch.onnx.export(
        net,
        torch.zeros(1, 3, spec.tile_size, spec.tile_size),
        path,
        input_names=["image"],
        output_names=["probs"],
        dynamic_axes=axes if dynamic else {"image": {0: "n"}, "probs": {0: "n"}},
        dynamo=False,
    )
    model = onnx.load(path)
    for key, value in spec_to_metadata(spec).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[str, dict]:
    path = write_rgb_tif(tmp_path_factory.mktemp("region") / "rgb.tif", width=512, height=512)
    with rasterio.open(path) as src:
        meta = {"crs_wkt": src.crs.to_wkt(), "bounds": tuple(src.bounds), "gsd": src.res[0]}
    return str(path), meta


def region(image: tuple[str, dict], width: int, height: int) -> RegionRequest:
    """A region of the image at the detector's 0.5 m, from 32 native px inside its corner."""
    path, meta = image
    left, _, _, top = meta["bounds"]
    pixel = SPEC.resolution_m
    return RegionRequest(
        cog_path=path,
        crs_wkt=meta["crs_wkt"],
        image_gsd=meta["gsd"],
        origin_x=left + 32 * pixel,
        origin_y=top - 32 * pixel,
        width=width,
        height=height,
        pixel_size=pixel,
    )


def whole_region_probabilities(net, request: RegionRequest) -> np.ndarray:
    """One convolution over the region and its context, cropped back to the region."""
    context, pixel = SPEC.overlap_px, request.pixel_size
    x0, y0 = request.origin_x, request.origin_y
    pixels = read_region(
        request.cog_path,
        rasterio.crs.CRS.from_wkt(request.crs_wkt),
        (
            x0 - context * pixel,
            y0 - (request.height + context) * pixel,
            x0 + (request.width + context) * pixel,
            y0 + context * pixel,
        ),
        (request.width + 2 * context, request.height + 2 * context),
        SPEC,
        request.image_gsd,
    )
    with torch.no_grad():
        out = net(torch.from_numpy(pixels[None])).numpy()[0]
    return out[:, context : context + request.height, context : context + request.width]


@pytest.mark.parametrize(
    ("dynamic", "chunk_px"),
    [(True, 0), (False, 0), (True, 64), (False, 64)],
    ids=["any-size input", "fixed input", "any-size input, big chunks", "fixed, big ignored"],
)
def test_region_equals_one_pass_over_it(image, tmp_path, dynamic, chunk_px):
    net = small_net()
    spec = dataclasses.replace(SPEC, region_chunk_px=chunk_px)
    detector = load_detector(export(net, tmp_path / "d.onnx", spec, dynamic))
    assert detector.fixed_input is (not dynamic)
    assert detector.spec.region_chunk_px == chunk_px
    calls = []
    run = detector.run
    detector.run = lambda batch: calls.append(batch.shape) or run(batch)
    # 112 x 80 px: neither side a multiple of the 32 px core, so some chunks are short.
    request = region(image, width=112, height=80)
    probabilities, transform, _timings = infer_region(request, detector)
    assert probabilities.shape == (2, 80, 112)
    assert transform.c == request.origin_x and transform.f == request.origin_y
    expected = whole_region_probabilities(net, request)
    assert np.abs(probabilities - expected).max() < 1e-5
    # 32 px cores: 4 x 3 chunks; 64 px chunks (any-size models only): 2 x 2.
    assert len(calls) == (4 if dynamic and chunk_px else 12)


def test_chunks_cover_the_side_exactly():
    big = dataclasses.replace(SPEC, region_chunk_px=96)
    for size in (16, 32, 48, 112, 320, 2048):
        for spec, whole, largest in ((SPEC, False, 32), (SPEC, True, 32), (big, False, 96)):
            edges = chunk_edges(size, spec, whole)
            sizes = np.diff(edges)
            assert edges[0] == 0 and edges[-1] == size
            assert (sizes > 0).all() and (sizes <= largest).all()
            assert all(e % LATTICE_PX == 0 for e in edges)
            assert len(sizes) == -(-size // largest)  # as few chunks as the limit allows
    with pytest.raises(ValueError, match="multiple of 16 px, not 100"):
        chunk_edges(100, SPEC)


def test_fixed_input_must_match_tiles_size(tmp_path):
    path = export(small_net(), tmp_path / "d.onnx", SPEC, dynamic=False)
    model = onnx.load(path)
    for prop in model.metadata_props:
        if prop.key == "tiles_size":
            prop.value = "128"
        if prop.key == "tiledetect_overlap_px":
            prop.value = "32"
    onnx.save(model, path)
    with pytest.raises(InvalidDetectorError, match="takes 64x64 px inputs but .* tiles_size 128"):
        load_detector(path)
