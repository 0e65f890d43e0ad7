"""ONNX detectors: loading, validation, execution providers and post-processing (issue 3)."""
