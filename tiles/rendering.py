"""Default display parameters, so non-8-bit imagery looks right in any client without tuning."""

from __future__ import annotations

from typing import Any


def default_tile_params(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """Query parameters (titiler's bidx / rescale) that display an image sensibly.

    8-bit RGB(A) needs none. Other data gets its first three bands (or its first one) stretched
    between the 2nd and 98th percentiles measured at ingest.
    """
    count, dtype = meta["count"], meta["dtype"]
    if dtype == "uint8" and count in (1, 3, 4):
        return []
    bands = [1, 2, 3] if count >= 3 else [1]
    params: list[tuple[str, str]] = [("bidx", str(b)) for b in bands] if count != len(bands) else []
    stats = meta.get("statistics") or {}
    names = meta.get("band_names") or [f"b{i}" for i in range(1, count + 1)]
    for band in bands:
        band_stats = stats.get(names[band - 1]) or {}
        low, high = band_stats.get("percentile_2"), band_stats.get("percentile_98")
        if low is None or high is None:
            continue
        if high <= low:
            high = low + 1
        params.append(("rescale", f"{low:g},{high:g}"))
    return params
