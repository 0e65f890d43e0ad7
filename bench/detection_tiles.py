"""Detection tile benchmark: a map viewport over a detection layer, cold and warm.

- Cold viewport: 24 display tiles (6x4) at the detector's native zoom, requested at once from a
  fresh server with an empty cache. Figure: wall time / onnxruntime alone on the same inference
  windows, timed in this run (target <= 1.25).
- Warm viewport: the same 24 tiles again, one at a time. Target p50 <= 5 ms and >= 50x faster
  than the cold viewport.
- Throughput: detection tiles/s with 8 concurrent clients over other tiles (cold cache).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import morecantile
import numpy as np

from bench.common import (
    BIN,
    BenchError,
    machine,
    percentile,
    subprocess_env,
    write_results,
)
from bench.imagery_tiles import ingest, uvicorn_server
from scenes.synthetic import SceneSpec, write_scene

SCENE_SIZE = 4096
SCENE_SEED = 21
DETECTOR_SECONDS = 20.0  # speed does not depend on how well the detector was trained
VIEWPORT = (6, 4)
THROUGHPUT_TILES = 48
CONCURRENCY = 8
TMS = morecantile.tms.get("WebMercatorQuad")


def register_detector(workdir: Path, data_dir: Path) -> tuple[str, Path]:
    from trainer.demo_detector import build_demo_detector

    onnx_path = workdir / "demo.onnx"
    build_demo_detector(onnx_path, seconds=DETECTOR_SECONDS, seed=0)
    done = subprocess.run(
        [str(BIN / "tiledetect"), "detectors", "add", str(onnx_path), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    if done.returncode != 0:
        raise BenchError(f"tiledetect detectors add failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["id"], onnx_path


def viewport(image: dict, zoom: int, columns: int, rows: int, offset: int = 0) -> list:
    west, south, east, north = image["bounds_wgs84"]
    centre = TMS.tile((west + east) / 2, (south + north) / 2, zoom)
    x0, y0 = centre.x - columns // 2 + offset, centre.y - rows // 2
    return [morecantile.Tile(x0 + dx, y0 + dy, zoom) for dy in range(rows) for dx in range(columns)]


def throughput_tiles(image: dict, zoom: int, avoid: set) -> list:
    covering = sorted(TMS.tiles(*image["bounds_wgs84"], zooms=[zoom]), key=lambda t: (t.y, t.x))
    inside = [t for t in covering[len(covering) // 8 :] if t not in avoid]
    return inside[:THROUGHPUT_TILES]


async def fetch_all(client: httpx.AsyncClient, urls: list[str], concurrency: int) -> list[float]:
    """GET every URL with at most `concurrency` in flight; latencies in ms."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(url: str) -> None:
        async with gate:
            start = time.perf_counter()
            response = await client.get(url)
            latencies.append((time.perf_counter() - start) * 1000)
            if response.status_code != 200 or "x-tiledetect-empty" in response.headers:
                raise BenchError(f"{url}: {response.status_code} {response.headers}")

    await asyncio.gather(*(one(url) for url in urls))
    return latencies


def onnx_alone(onnx_path: Path, image_meta: dict, tiles: list) -> tuple[float, int]:
    """onnxruntime by itself on exactly the windows the tiles need (one call per window)."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    from inference.display import OBJECT_MARGIN_PX, expand
    from inference.session import load_detector
    from inference.windows import WindowGrid

    detector = load_detector(onnx_path)
    grid = WindowGrid.for_image(image_meta, detector.spec)
    crs = CRS.from_user_input(image_meta["crs"])
    windows = set()
    for tile in tiles:
        bounds = transform_bounds(TMS.rasterio_crs, crs, *TMS.xy_bounds(tile), densify_pts=21)
        windows.update(grid.windows_for(expand(bounds, OBJECT_MARGIN_PX * grid.pixel_size)))
    size = detector.spec.tile_size
    batch = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    detector.run(batch)  # warm-up, as the server's first call
    start = time.perf_counter()
    for _ in windows:
        detector.run(batch)
    return time.perf_counter() - start, len(windows)


async def measure(base: str, image: dict, detector_id: str, onnx_path: Path) -> dict:
    zoom = image["detection_zoom"]
    layer = f"{base}/api/detectors/{detector_id}/images/{image['id']}/tiles/WebMercatorQuad"
    tiles = viewport(image, zoom, *VIEWPORT)
    urls = [f"{layer}/{t.z}/{t.x}/{t.y}.png" for t in tiles]
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=32)) as client:
        start = time.perf_counter()
        await fetch_all(client, urls, len(urls))
        cold_s = time.perf_counter() - start

        warm_ms: list[float] = []
        for url in urls:
            warm_ms += await fetch_all(client, [url], 1)
        warm_wall_start = time.perf_counter()
        await fetch_all(client, urls, len(urls))
        warm_wall_s = time.perf_counter() - warm_wall_start

        others = throughput_tiles(image, zoom, set(tiles))
        start = time.perf_counter()
        latencies = await fetch_all(
            client, [f"{layer}/{t.z}/{t.x}/{t.y}.png" for t in others], CONCURRENCY
        )
        throughput_s = time.perf_counter() - start
    onnx_s, windows = onnx_alone(onnx_path, image, tiles)
    return {
        "zoom": zoom,
        "viewport_tiles": len(urls),
        "viewport_windows": windows,
        "cold_wall_s": cold_s,
        "onnx_alone_s": onnx_s,
        "cold_ratio": cold_s / onnx_s,
        "warm_p50_ms": statistics.median(warm_ms),
        "warm_p95_ms": percentile(warm_ms, 95),
        "warm_viewport_s": warm_wall_s,
        "cold_over_warm": cold_s / warm_wall_s,
        "throughput_tiles_per_s": len(others) / throughput_s,
        "throughput_p95_ms": percentile(latencies, 95),
        "throughput_tiles": len(others),
    }


def report(result: dict, context: dict) -> None:
    def verdict(ok: bool) -> str:
        return "OK" if ok else "MISSED"

    print(
        f'detection_tiles machine cpus={context["cpus"]} model="{context["cpu_model"]}" '
        f"provider={context['provider']} batch={context['batch']} zoom={result['zoom']}"
    )
    print(
        f"detection_tiles cold_viewport tiles={result['viewport_tiles']} "
        f"windows={result['viewport_windows']} wall_s={result['cold_wall_s']:.2f} "
        f"onnx_alone_s={result['onnx_alone_s']:.2f} ratio={result['cold_ratio']:.2f} "
        f"(target <= 1.25) {verdict(result['cold_ratio'] <= 1.25)}"
    )
    print(
        f"detection_tiles warm_viewport p50_ms={result['warm_p50_ms']:.1f} "
        f"p95_ms={result['warm_p95_ms']:.1f} (target p50 <= 5) "
        f"{verdict(result['warm_p50_ms'] <= 5)} "
        f"cold/warm={result['cold_over_warm']:.0f}x (target >= 50x) "
        f"{verdict(result['cold_over_warm'] >= 50)}"
    )
    print(
        f"detection_tiles throughput concurrency={CONCURRENCY} tiles={result['throughput_tiles']} "
        f"tiles_per_s={result['throughput_tiles_per_s']:.2f} "
        f"p95_ms={result['throughput_p95_ms']:.0f}"
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tiledetect-bench-detect-") as tmp:
        workdir = Path(tmp)
        data_dir = workdir / "data"
        tif = workdir / "scene.tif"
        write_scene(
            SceneSpec(width=SCENE_SIZE, height=SCENE_SIZE, seed=SCENE_SEED),
            tif,
            workdir / "scene.geojson",
        )
        image_id = ingest(tif, data_dir)
        detector_id, onnx_path = register_detector(workdir, data_dir)
        with uvicorn_server(
            "server.app:create_app",
            workdir,
            "/healthz",
            factory=True,
            TILEDETECT_DATA_DIR=str(data_dir),
        ) as base:
            image = httpx.get(f"{base}/api/images/{image_id}", timeout=30).json()
            tilejson = httpx.get(
                f"{base}/api/detectors/{detector_id}/images/{image_id}/WebMercatorQuad/tilejson.json",
                timeout=60,
            ).json()
            image["detection_zoom"] = tilejson["maxzoom"]
            health = httpx.get(f"{base}/healthz", timeout=30).json()
            result = asyncio.run(measure(base, image, detector_id, onnx_path))
    context = machine() | {
        "provider": health["execution_providers"][0],
        "batch": health["inference_batch_size"],
    }
    report(result, context)
    write_results("detection_tiles", {"result": result, "context": context})
    return 0


if __name__ == "__main__":
    sys.exit(main())
