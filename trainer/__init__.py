"""Training custom detectors from annotations and exporting them to ONNX (issue 4)."""
