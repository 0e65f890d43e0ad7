"""The detector format: one ONNX file describing itself in `metadata_props`.

Key names follow the Deepness QGIS plugin so its models load here too (values are JSON text):
`model_type` ("Segmentor"), `class_names` ({"0": "background", "1": "tree", ...}), `resolution`
(centimetres per pixel), `tiles_size` (px), `tiles_overlap` (percent of the tile size),
`standardization_mean` / `standardization_std` (per band, applied after scaling 0..255 to 0..1),
`seg_thresh` / `det_conf` (score threshold), `seg_small_segment` (px). tiledetect adds keys under
`tiledetect_` (input bands, minimum object area, colours, a name, and `expand_ratio`: how much
a detector trained on object cores grows each object it finds, `output_shape`: "box" for a
detector trained on box labels, whose objects are returned as boxes, else "polygon", and
`box_regression`: the model has a second output with each pixel's object box).

The model takes float32 NCHW (N, bands, H, W) and returns per-class probabilities
(N, classes, H, W), class 0 being background, as Deepness segmentors do. A box-regression
detector also returns `boxes` (N, 4, H, W): per pixel, the distances in pixels from its centre to
the top, left, bottom and right edges of the box of the object it belongs to (FCOS's encoding);
inference carries them as 4 channels after the classes (`DetectorSpec.channels`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import InvalidDetectorError

REQUIRED_KEYS = ("model_type", "class_names", "resolution")
SUPPORTED_MODEL_TYPES = ("Segmentor",)
MAX_EXPAND_RATIO = 4.0  # grows a disc's radius 3x: beyond that a core says little of the object
BOX_CHANNELS = 4  # a box-regression detector's distances: top, left, bottom, right
OUTPUT_SHAPES = ("polygon", "box")  # what objects come back as (DetectorSpec.output_shape)
DEFAULT_COLORS = ("#22c55e", "#ef4444", "#3b82f6", "#f59e0b", "#a855f7", "#06b6d4", "#ec4899")


@dataclass(frozen=True)
class DetectorSpec:
    """What serving, training evaluation and export need to know about a detector."""

    model_type: str
    class_names: tuple[str, ...]  # without background; output channel i+1 is class_names[i]
    resolution_m: float  # native ground sample distance, metres per pixel
    tile_size: int  # inference window, px at native resolution (margin included)
    overlap_px: int  # context margin on each side, px at native resolution
    input_bands: tuple[int, ...] = (1, 2, 3)  # 1-based image band indexes fed to the model
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    score_threshold: float = 0.5
    min_area_m2: float = 1.0
    colors: tuple[str, ...] = field(default=())
    name: str = ""
    # Largest chunk core (px) region inference may feed at once; 0: one window core. Only for
    # fully convolutional detectors whose output at a pixel depends on the input within the
    # overlap margin alone, whatever the input size (tiledetect's own): bigger chunks then give
    # the same probabilities as windows with less context computed twice.
    region_chunk_px: int = 0
    # Detectors trained on shrunk object cores (touching crowns stay apart, DBNet's recipe)
    # grow each found polygon back by area * expand_ratio / perimeter (inference.objects);
    # 0: objects are taken as segmented.
    expand_ratio: float = 0.0
    # "box": objects come back as their axis-aligned bounding boxes (in the image's pixel grid),
    # as users who labelled boxes expect (Picterra's box detectors); "polygon": as outlines.
    output_shape: str = "polygon"
    # The model also regresses each pixel's object box (a second output, see the module
    # docstring); objects are then the boxes their pixels agree on (inference.objects).
    box_regression: bool = False

    @property
    def class_channels(self) -> int:
        """Channels of class probabilities, background included."""
        return 1 + len(self.class_names)

    @property
    def channels(self) -> int:
        """Channels inference carries per pixel: the classes, then any box distances."""
        return self.class_channels + (BOX_CHANNELS if self.box_regression else 0)

    @property
    def objects_outgrow_pixels(self) -> bool:
        """Objects reach beyond the pixels the model marks (grown cores, regressed boxes): a
        picture of the probabilities would show less than the detector finds."""
        return bool(self.expand_ratio) or self.box_regression

    @property
    def core_size(self) -> int:
        """The part of a window whose predictions are kept: the window minus its margins."""
        return self.tile_size - 2 * self.overlap_px

    def color(self, class_index: int) -> str:
        """Colour of class `class_index` (0-based, background excluded)."""
        if class_index < len(self.colors):
            return self.colors[class_index]
        return DEFAULT_COLORS[class_index % len(DEFAULT_COLORS)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "classes": list(self.class_names),
            "resolution_m": self.resolution_m,
            "tile_size": self.tile_size,
            "overlap_px": self.overlap_px,
            "input_bands": list(self.input_bands),
            "mean": list(self.mean),
            "std": list(self.std),
            "score_threshold": self.score_threshold,
            "min_area_m2": self.min_area_m2,
            "colors": [self.color(i) for i in range(len(self.class_names))],
            "region_chunk_px": self.region_chunk_px,
            "expand_ratio": self.expand_ratio,
            "output_shape": self.output_shape,
            "box_regression": self.box_regression,
        }


def spec_to_metadata(spec: DetectorSpec) -> dict[str, str]:
    """The metadata_props to write into an ONNX file (Deepness keys plus ours)."""
    class_names = {"0": "background"} | {str(i + 1): n for i, n in enumerate(spec.class_names)}
    overlap_percent = 100.0 * spec.overlap_px / spec.tile_size
    values: dict[str, Any] = {
        "model_type": spec.model_type,
        "class_names": class_names,
        "resolution": spec.resolution_m * 100.0,
        "tiles_size": spec.tile_size,
        "tiles_overlap": overlap_percent,
        "standardization_mean": list(spec.mean),
        "standardization_std": list(spec.std),
        "seg_thresh": spec.score_threshold,
        "seg_small_segment": max(1, round(spec.min_area_m2 / spec.resolution_m**2)),
        "tiledetect_format": 1,
        "tiledetect_overlap_px": spec.overlap_px,
        "tiledetect_input_bands": list(spec.input_bands),
        "tiledetect_min_area_m2": spec.min_area_m2,
        "tiledetect_colors": [spec.color(i) for i in range(len(spec.class_names))],
        "tiledetect_name": spec.name,
        "tiledetect_region_chunk_px": spec.region_chunk_px,
        "tiledetect_expand_ratio": spec.expand_ratio,
        "tiledetect_output_shape": spec.output_shape,
        "tiledetect_box_regression": spec.box_regression,
    }
    return {key: json.dumps(value) for key, value in values.items()}


def spec_from_metadata(metadata: Mapping[str, str]) -> DetectorSpec:
    """Parse and check metadata_props; an InvalidDetectorError names what is missing or wrong."""
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise InvalidDetectorError(
            f"the ONNX file lacks required metadata: {', '.join(missing)} "
            "(see inference/format.py for the keys a detector must carry)"
        )
    values = {key: _json_value(key, raw) for key, raw in metadata.items()}
    model_type = str(values["model_type"])
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InvalidDetectorError(
            f"model_type {model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}"
        )
    class_names = _class_names(values["class_names"])
    resolution_m = _positive(values, "resolution") / 100.0
    tile_size = int(values.get("tiles_size", 256))
    if tile_size < 32:
        raise InvalidDetectorError(f"tiles_size must be at least 32 px, not {tile_size}")
    if "tiledetect_overlap_px" in values:
        overlap_px = int(values["tiledetect_overlap_px"])
    else:
        overlap_px = round(tile_size * float(values.get("tiles_overlap", 0)) / 100.0 / 2)
    if not 0 <= overlap_px < tile_size // 2:
        raise InvalidDetectorError(f"the overlap ({overlap_px} px) must be under half a tile")
    bands = tuple(int(b) for b in values.get("tiledetect_input_bands", (1, 2, 3)))
    mean = _per_band(values, "standardization_mean", len(bands), 0.0)
    std = _per_band(values, "standardization_std", len(bands), 1.0)
    if any(s <= 0 for s in std):
        raise InvalidDetectorError("standardization_std values must be positive")
    threshold = float(values.get("seg_thresh", values.get("det_conf", 0.5)))
    if not 0 < threshold < 1:
        raise InvalidDetectorError(f"the score threshold must be between 0 and 1, not {threshold}")
    if "tiledetect_min_area_m2" in values:
        min_area = float(values["tiledetect_min_area_m2"])
    else:
        min_area = float(values.get("seg_small_segment", 1)) * resolution_m**2
    region_chunk_px = int(values.get("tiledetect_region_chunk_px", 0))
    if region_chunk_px < 0 or region_chunk_px % 16:
        raise InvalidDetectorError(
            f"tiledetect_region_chunk_px must be a multiple of 16 px, not {region_chunk_px}"
        )
    expand_ratio = float(values.get("tiledetect_expand_ratio", 0.0))
    if not 0 <= expand_ratio <= MAX_EXPAND_RATIO:
        raise InvalidDetectorError(
            f"tiledetect_expand_ratio must be between 0 and {MAX_EXPAND_RATIO}, not {expand_ratio}"
        )
    output_shape = str(values.get("tiledetect_output_shape", "polygon"))
    if output_shape not in OUTPUT_SHAPES:
        raise InvalidDetectorError(
            f"tiledetect_output_shape must be one of {', '.join(OUTPUT_SHAPES)}, "
            f"not {output_shape!r}"
        )
    box_regression = values.get("tiledetect_box_regression", False)
    if not isinstance(box_regression, bool):
        raise InvalidDetectorError(
            f"tiledetect_box_regression must be true or false, not {box_regression!r}"
        )
    if box_regression and output_shape != "box":
        raise InvalidDetectorError('a box-regression detector must have output_shape "box"')
    return DetectorSpec(
        model_type=model_type,
        class_names=class_names,
        resolution_m=resolution_m,
        tile_size=tile_size,
        overlap_px=overlap_px,
        region_chunk_px=region_chunk_px,
        input_bands=bands,
        mean=mean,
        std=std,
        score_threshold=threshold,
        min_area_m2=min_area,
        colors=tuple(str(c) for c in values.get("tiledetect_colors", ())),
        name=str(values.get("tiledetect_name", "")),
        expand_ratio=expand_ratio,
        output_shape=output_shape,
        box_regression=box_regression,
    )


def _json_value(key: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return raw  # Deepness writes some plain strings (model_type) without JSON quotes


def _class_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise InvalidDetectorError('class_names must be a JSON object such as {"0": "background"}')
    if isinstance(value, list):
        value = dict(enumerate(value))
    try:
        names = [str(value[k]) for k in sorted(value, key=int)]
    except (TypeError, ValueError) as exc:
        raise InvalidDetectorError("class_names keys must be class indexes 0, 1, ...") from exc
    if len(names) < 2:
        raise InvalidDetectorError("class_names needs background and at least one class")
    return tuple(names[1:])


def _positive(values: dict[str, Any], key: str) -> float:
    try:
        number = float(values[key])
    except (TypeError, ValueError) as exc:
        raise InvalidDetectorError(f"{key} must be a number") from exc
    if number <= 0:
        raise InvalidDetectorError(f"{key} must be positive, not {number}")
    return number


def _per_band(values: dict[str, Any], key: str, bands: int, default: float) -> tuple[float, ...]:
    value = values.get(key, [default] * bands)
    if isinstance(value, int | float):
        value = [value] * bands
    if len(value) != bands:
        raise InvalidDetectorError(f"{key} has {len(value)} values for {bands} input bands")
    return tuple(float(v) for v in value)


def embed_spec(onnx_path: str | Path, spec: DetectorSpec) -> None:
    """Write the spec into an ONNX file's metadata_props (replacing keys of the same name)."""
    import onnx

    model = onnx.load(str(onnx_path))
    metadata = spec_to_metadata(spec)
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(onnx_path))
