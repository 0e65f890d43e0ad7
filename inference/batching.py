"""Gathers concurrent window inferences into one onnxruntime call.

Worth it where a call has a large fixed cost (a GPU launch, host-device copies); on CPU a batch
of 1 is as fast per window, so the default there is no batching (see bench/detection_tiles.py).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np

from inference.session import Detector


class InferenceBatcher:
    def __init__(
        self, detector: Detector, executor: Executor, max_batch: int = 1, max_wait_s: float = 0.004
    ) -> None:
        self.detector = detector
        self.executor = executor
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_s
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.calls = 0  # onnxruntime calls made, for tests and benchmarks
        self.windows = 0

    async def infer(self, window: np.ndarray) -> np.ndarray:
        """One standardised window (bands, H, W) -> its probabilities (classes, H, W)."""
        loop = asyncio.get_running_loop()
        if self.max_batch == 1:
            return (await loop.run_in_executor(self.executor, self._run, window[None]))[0]
        future: asyncio.Future = loop.create_future()
        self._pending.append((window, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            asyncio.get_running_loop().create_task(self._run_batch(batch))

    async def _run_batch(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            stacked = np.stack([window for window, _ in batch])
            outputs = await loop.run_in_executor(self.executor, self._run, stacked)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), output in zip(batch, outputs, strict=True):
            if not future.done():
                future.set_result(output)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.windows += len(batch)
        return self.detector.run(batch)
