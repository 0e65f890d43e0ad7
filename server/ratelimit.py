"""Requests per minute per API key: a token bucket per key, in this process's memory.

A key may send `per_minute` requests a minute on average and a quarter of that at once (a web
map opening a viewport asks for dozens of tiles together). Several server processes each keep
their own buckets, so N workers allow up to N times the rate; the limit is there to keep one
runaway client from starving the others, not to bill.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from cachetools import TTLCache

BURST_FRACTION = 0.25  # of the per-minute rate, sendable at once
IDLE_FORGET_S = 600.0  # a bucket untouched this long is full again, so it can be forgotten


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._buckets: TTLCache[str, _Bucket] = TTLCache(maxsize=100_000, ttl=IDLE_FORGET_S)
        self._lock = threading.Lock()

    def take(self, key: str, per_minute: int) -> float:
        """Spend one request of `key`; 0 if allowed, else the seconds until one is."""
        capacity = max(1.0, per_minute * BURST_FRACTION)
        refill = per_minute / 60.0  # tokens per second
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(capacity, now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * refill)
            bucket.updated = now
            self._buckets[key] = bucket
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / refill if refill > 0 else 60.0
