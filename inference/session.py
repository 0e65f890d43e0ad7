"""Loads a detector: an onnxruntime session on the best execution provider, and its spec."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference.errors import InvalidDetectorError
from inference.format import BOX_CHANNELS, DetectorSpec, spec_from_metadata

# CUDA first when onnxruntime-gpu sees a GPU; the CPU provider is always there.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers() -> list[str]:
    offered = ort.get_available_providers()
    return [p for p in PREFERRED_PROVIDERS if p in offered]


@dataclass
class Detector:
    """A loaded ONNX detector. `run` is thread-safe (onnxruntime sessions are)."""

    spec: DetectorSpec
    session: ort.InferenceSession
    input_name: str
    provider: str
    # Models exported with a fixed input (common for Deepness ones) only take whole windows.
    fixed_input: bool = False

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, bands, H, W), already standardised -> (N, spec.channels, H, W): the
        class probabilities, then a box-regression detector's box distances."""
        outputs = self.session.run(None, {self.input_name: batch})
        if self.spec.box_regression:
            return np.concatenate(outputs[:2], axis=1, dtype=np.float32)
        return np.asarray(outputs[0], dtype=np.float32)


_lock = threading.Lock()


def load_detector(
    path: str | Path, providers: list[str] | None = None, threads: int | None = None
) -> Detector:
    """Open and validate an ONNX detector; InvalidDetectorError says what is wrong with it.

    `threads` caps onnxruntime's CPU threads per call (default: every core), for callers that
    run several calls at once and would otherwise oversubscribe the cores.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    wanted = providers or available_providers()
    try:
        with _lock:
            session = ort.InferenceSession(str(path), options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.replace(f"from {path} ", "").replace(str(path), "the file")
        raise InvalidDetectorError(f"not a loadable ONNX model ({first[:300]})") from exc
    spec = spec_from_metadata(session.get_modelmeta().custom_metadata_map)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InvalidDetectorError("a detector takes one NCHW image input")
    channels = inputs[0].shape[1]
    if isinstance(channels, int) and channels != len(spec.input_bands):
        raise InvalidDetectorError(
            f"the model takes {channels} bands but its metadata lists {len(spec.input_bands)}"
        )
    if not outputs or len(outputs[0].shape) != 4:
        raise InvalidDetectorError("a detector returns per-class probabilities (N, C, H, W)")
    classes = outputs[0].shape[1]
    if isinstance(classes, int) and classes != len(spec.class_names) + 1:
        raise InvalidDetectorError(
            f"the model returns {classes} channels but class_names has "
            f"{len(spec.class_names) + 1} (background included)"
        )
    if spec.box_regression and (len(outputs) < 2 or outputs[1].shape[1] != BOX_CHANNELS):
        raise InvalidDetectorError(
            "a box-regression detector returns a second output of 4 box distances (N, 4, H, W)"
        )
    height, width = inputs[0].shape[2:]
    fixed = isinstance(height, int) and isinstance(width, int)
    if fixed and (height, width) != (spec.tile_size, spec.tile_size):
        raise InvalidDetectorError(
            f"the model takes {height}x{width} px inputs but its metadata says tiles_size "
            f"{spec.tile_size}"
        )
    return Detector(spec, session, inputs[0].name, session.get_providers()[0], fixed)
