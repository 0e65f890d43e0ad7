"""Runs long jobs off the request path, in threads: GDAL releases the GIL while it works."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class BackgroundRunner:
    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tiledetect-job")

    def submit(self, fn: Callable, *args) -> Future:
        future = self._pool.submit(fn, *args)
        future.add_done_callback(_log_failure)
        return future

    def shutdown(self) -> None:
        # Queued jobs are dropped; the next start marks them failed (recover_interrupted).
        self._pool.shutdown(wait=True, cancel_futures=True)


def _log_failure(future: Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.info("background job ended with an error: %s", future.exception())
