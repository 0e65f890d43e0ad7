"""The ONNX export of the shared network, as trainings running in parallel threads of one Dask
worker call it (tests/test_faults.py starts two trainings at once)."""

from __future__ import annotations

import threading
from pathlib import Path

import onnxruntime as ort
import torch

from trainer.network import SegmentationNet, export_onnx


def test_exports_in_parallel_threads_all_succeed(tmp_path: Path):
    """torch's TorchScript exporter keeps global state; without the module's lock two exports at
    once fail with "GLOBALS.in_onnx_export must be False"."""
    torch.manual_seed(0)
    nets = [SegmentationNet((8, 16), classes=2) for _ in range(4)]
    start = threading.Barrier(len(nets))
    errors: list[BaseException] = []

    def export(index: int) -> None:
        start.wait()
        try:
            for round_ in range(3):
                export_onnx(nets[index], tmp_path / f"net{index}-{round_}.onnx")
        except BaseException as exc:  # collected: a thread's exception would be lost
            errors.append(exc)

    threads = [threading.Thread(target=export, args=(i,)) for i in range(len(nets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for path in sorted(tmp_path.glob("*.onnx")):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (probabilities,) = session.run(None, {"input": torch.zeros(1, 3, 64, 64).numpy()})
        assert probabilities.shape == (1, 2, 64, 64)
    assert len(list(tmp_path.glob("*.onnx"))) == 12
