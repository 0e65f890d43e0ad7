"""Hostile and broken input, made by code: each function writes one case into a folder.

Nothing here is committed as a binary: the tests call these generators on tmp dirs. The crafted
TIFFs (a decompression bomb whose tiles all point at one compressed block, a sparse file that
declares a million pixels per side) are written byte by byte, because GDAL would refuse to write
them or would take minutes to.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import rasterio
from onnx import TensorProto, helper
from rasterio.transform import from_origin

from inference.format import DetectorSpec, embed_spec
from tests.conftest import write_rgb_tif

UTM = "EPSG:32633"
ORIGIN = (500000.0, 5400000.0)


# --- files ----------------------------------------------------------------------------------------


def not_a_raster(folder: Path) -> Path:
    path = folder / "table.tif"
    path.write_bytes(b"id,name\n1,not an image\n" * 100)
    return path


def zero_bytes(folder: Path) -> Path:
    path = folder / "empty.tif"
    path.write_bytes(b"")
    return path


def truncated_header(folder: Path) -> Path:
    """The first 300 bytes of a GeoTIFF: the magic number survives, the IFD does not."""
    whole = write_rgb_tif(folder / "whole.tif", width=256, height=256)
    path = folder / "header-only.tif"
    path.write_bytes(whole.read_bytes()[:300])
    return path


def truncated_tiles(folder: Path) -> Path:
    """A tiled, deflated GeoTIFF cut at 60%: its IFD (at the front) lists tiles that are gone."""
    whole = write_rgb_tif(folder / "whole.tif", width=1024, height=1024, compress="deflate")
    content = whole.read_bytes()
    path = folder / "cut.tif"
    path.write_bytes(content[: int(len(content) * 0.6)])
    return path


def no_georeference(folder: Path) -> Path:
    path = folder / "plain.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8"
    ) as dst:
        dst.write(np.zeros((3, 64, 64), np.uint8))
    return path


def thousands_of_bands(folder: Path, bands: int = 3000) -> Path:
    """A 4x4 px image with 3000 bands (pixel interleaved: one IFD, one tiny strip)."""
    path = folder / "bands.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=4,
        height=4,
        count=bands,
        dtype="uint8",
        crs=UTM,
        transform=from_origin(*ORIGIN, 1, 1),
        interleave="pixel",
    ) as dst:
        dst.write(np.zeros((bands, 4, 4), np.uint8))
    return path


def float_image(folder: Path, special: str, nodata: float | None = None) -> Path:
    """A float32 ramp with a block of NaN ('nan'), +/-inf ('inf'), or all NaN ('all-nan')."""
    size = 512
    yy, xx = np.mgrid[0:size, 0:size]
    data = (100.0 + xx + yy).astype(np.float32)
    if special == "nan":
        data[:128, :128] = np.nan
    elif special == "inf":
        data[:128, :128] = np.inf
        data[-64:, -64:] = -np.inf
    elif special == "all-nan":
        data[:] = np.nan
    path = folder / f"float-{special}.tif"
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "float32",
        "crs": UTM,
        "transform": from_origin(*ORIGIN, 0.5, 0.5),
        "tiled": True,
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def broken_overviews(folder: Path) -> Path:
    """A valid-looking COG (JPEG-free, deflate) whose overview tiles are overwritten with junk.

    The full-resolution level is intact, so a validator that samples only level 0 passes it.
    """
    source = write_rgb_tif(folder / "src.tif", width=2048, height=2048, compress="deflate")
    path = folder / "cog-broken-overviews.tif"
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    profile = cog_profiles.get("deflate")
    cog_translate(str(source), str(path), profile, overview_level=3, quiet=True)
    with rasterio.open(path) as src:
        assert src.overviews(1), "the COG must have overviews to break"
    offsets = overview_tile_extents(path)
    content = bytearray(path.read_bytes())
    for offset, length in offsets:
        content[offset : offset + length] = b"\xde\xad\xbe\xef" * (length // 4) + b"\x00" * (
            length % 4
        )
    path.write_bytes(bytes(content))
    return path


def overview_tile_extents(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every tile of every overview level, from GDAL's TIFF metadata."""
    extents = []
    with rasterio.open(path) as src:
        levels = len(src.overviews(1))
    for level in range(levels):
        with rasterio.open(path, overview_level=level) as ovr:
            rows, cols = (-(-n // b) for n, b in zip(ovr.shape, ovr.block_shapes[0], strict=True))
            for row in range(rows):
                for col in range(cols):
                    offset = ovr.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)
                    size = ovr.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1)
                    if offset and size:
                        extents.append((int(offset), int(size)))
    return extents


# --- crafted TIFFs --------------------------------------------------------------------------------

_SHORT, _LONG, _DOUBLE = 3, 4, 12


def _tiff(
    path: Path,
    width: int,
    height: int,
    tile: int,
    tile_data: bytes | None,
    compression: int,
    georeferenced: bool = True,
) -> Path:
    """A little-endian classic TIFF, one band uint8, tiled. Every tile points at `tile_data`
    (one shared compressed block), or at nothing (offset 0, byte count 0: sparse) when None."""
    across, down = -(-width // tile), -(-height // tile)
    tiles = across * down
    entries: list[tuple[int, int, int, bytes]] = []  # tag, type, count, packed value
    header = 8
    blob = b""

    def place(data: bytes) -> int:
        nonlocal blob
        offset = header + len(blob)
        blob += data + (b"\x00" if len(data) % 2 else b"")
        return offset

    data_offset = place(tile_data) if tile_data else 0
    data_count = len(tile_data) if tile_data else 0
    offsets = place(struct.pack(f"<{tiles}I", *([data_offset] * tiles)))
    counts = place(struct.pack(f"<{tiles}I", *([data_count] * tiles)))

    def long(value: int) -> bytes:
        return struct.pack("<I", value)

    def short(value: int) -> bytes:
        return struct.pack("<HH", value, 0)

    entries += [
        (256, _LONG, 1, long(width)),
        (257, _LONG, 1, long(height)),
        (258, _SHORT, 1, short(8)),
        (259, _SHORT, 1, short(compression)),
        (262, _SHORT, 1, short(1)),  # min-is-black
        (277, _SHORT, 1, short(1)),
        (284, _SHORT, 1, short(1)),
        (322, _LONG, 1, long(tile)),
        (323, _LONG, 1, long(tile)),
        (324, _LONG, tiles, long(offsets)),
        (325, _LONG, tiles, long(counts)),
        (339, _SHORT, 1, short(1)),  # unsigned integer
    ]
    if georeferenced:
        scale = place(struct.pack("<3d", 1.0, 1.0, 0.0))
        tiepoint = place(struct.pack("<6d", 0, 0, 0, ORIGIN[0], ORIGIN[1], 0))
        # GeoKeyDirectory: version 1.1.0, 3 keys: projected model, pixel-is-area, EPSG 32633
        keys = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633]
        geokeys = place(struct.pack(f"<{len(keys)}H", *keys))
        entries += [
            (33550, _DOUBLE, 3, long(scale)),
            (33922, _DOUBLE, 6, long(tiepoint)),
            (34735, _SHORT, len(keys), long(geokeys)),
        ]
    entries.sort()
    ifd_offset = header + len(blob)
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + value
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_offset) + blob + ifd)
    return path


def decompression_bomb(folder: Path, side: int = 200_000, tile: int = 1024) -> Path:
    """A 200000x200000 px image (40 GB of pixels) in about 300 kB: every tile is the same
    1 kB deflate block of zeros."""
    block = zlib.compress(bytes(tile * tile), 9)
    return _tiff(folder / "bomb.tif", side, side, tile, block, compression=8)


def huge_sparse(folder: Path, side: int = 1_000_000, tile: int = 8192) -> Path:
    """A sparse tiled TIFF declaring 10^6 x 10^6 px with no tile written (about 120 kB)."""
    return _tiff(folder / "sparse.tif", side, side, tile, None, compression=1)


def sparse_within_side_limit(folder: Path, side: int = 400_000, tile: int = 8192) -> Path:
    """Sparse too, but within the per-side limit: 1.6e11 pixels from a 20 kB file."""
    return _tiff(folder / "sparse-400k.tif", side, side, tile, None, compression=1)


# --- detectors ------------------------------------------------------------------------------------


def tiny_detector(path: Path, resolution_m: float = 0.3) -> Path:
    """A real, loadable ONNX detector in a few kB: a 1x1 convolution and a softmax (one class,
    'bright': pixels far above the mean), built with onnx.helper (no torch)."""
    weight = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]], np.float32).reshape(2, 3, 1, 1)
    bias = np.array([0.0, -12.0], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2, "h", "w"])],
        initializer=[
            helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel()),
            helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    spec = DetectorSpec(
        model_type="Segmentor",
        class_names=("bright",),
        resolution_m=resolution_m,
        tile_size=128,
        overlap_px=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        name="tiny test detector",
    )
    embed_spec(path, spec)
    return path


def truncated_detector(folder: Path) -> Path:
    whole = tiny_detector(folder / "whole.onnx")
    path = folder / "cut.onnx"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return path


def not_onnx(folder: Path) -> Path:
    path = folder / "model.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000))
    return path
