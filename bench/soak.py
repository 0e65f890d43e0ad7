"""Soak: 32 concurrent clients on imagery and detection tiles for two minutes, on loopback.

A real `tiledetect serve` process over a synthetic scene and the demo detector (trained briefly:
speed does not depend on quality). Each client loops until the deadline, picking a request from
a fixed mix: imagery PNG tiles over four zooms and detection PNG/MVT tiles at the detector's
two native zooms, from pools of positions drawn with a skew (a few hot tiles, a long tail), so
the caches see both hits and misses. The detection cache is set smaller than what the scene's
windows need, so it fills and must evict during the run.

Figures: requests and errors (must be 0), p50/p95/p99 latency per kind, throughput, and the
server's RSS sampled every second: flat once warm (last quarter vs third) when caches are
bounded; the first quarter shows the warm-up.

    python -m bench.soak [--seconds 120] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import morecantile
import psutil

from bench.common import (
    BIN,
    BenchError,
    free_port,
    log_tail,
    machine,
    percentile,
    stop_process,
    subprocess_env,
    wait_ready,
    write_results,
)
from bench.detection_tiles import register_detector
from bench.imagery_tiles import ingest
from scenes.synthetic import SceneSpec, write_scene

SCENE_SIZE = 4096
SCENE_SEED = 23
CACHE_BYTES = 48 * 1024**2  # less than the scene's windows need: the cache must evict
REQUEST_TIMEOUT_S = 120.0
TMS = morecantile.tms.get("WebMercatorQuad")
# kind -> share of requests
MIX = {"imagery": 0.6, "detection_png": 0.25, "detection_mvt": 0.15}


@dataclass
class Pools:
    """Candidate URLs per kind; drawn with a skew so some repeat (hits) and most do not."""

    urls: dict[str, list[str]]

    def draw(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        pool = self.urls[kind]
        # Pareto-like: index = n * u^3 puts about half the draws on the first eighth of the pool.
        return kind, pool[min(len(pool) - 1, int(len(pool) * rng.random() ** 3))]


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, kind: str, ms: float) -> None:
        self.latencies.setdefault(kind, []).append(ms)


def tiles_over(bounds: tuple, zoom: int, seed: int) -> list[morecantile.Tile]:
    tiles = list(TMS.tiles(*bounds, zooms=[zoom]))
    random.Random(seed).shuffle(tiles)
    return tiles


def make_pools(base: str, image: dict, detector_id: str, detection_zoom: int) -> Pools:
    bounds = image["bounds_wgs84"]
    imagery = []
    for zoom in range(image["maxzoom"] - 3, image["maxzoom"] + 1):
        imagery += [
            f"{base}/api/images/{image['id']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
            for t in tiles_over(bounds, zoom, zoom)
        ]
    random.Random(0).shuffle(imagery)
    layer = f"{base}/api/detectors/{detector_id}/images/{image['id']}/tiles/WebMercatorQuad"
    detection = [
        t for zoom in (detection_zoom - 1, detection_zoom) for t in tiles_over(bounds, zoom, zoom)
    ]
    random.Random(1).shuffle(detection)
    return Pools(
        {
            "imagery": imagery,
            "detection_png": [f"{layer}/{t.z}/{t.x}/{t.y}.png" for t in detection],
            "detection_mvt": [f"{layer}/{t.z}/{t.x}/{t.y}.mvt" for t in detection],
        }
    )


async def client_loop(
    http: httpx.AsyncClient, pools: Pools, deadline: float, seed: int, tally: Tally
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        kind, url = pools.draw(rng)
        start = time.perf_counter()
        try:
            response = await http.get(url)
        except httpx.HTTPError as exc:
            tally.errors.append(f"{kind} {url}: {type(exc).__name__} {exc}")
            continue
        tally.add(kind, (time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            tally.errors.append(f"{kind} {url}: {response.status_code} {response.text[:200]}")


async def load(pools: Pools, clients: int, seconds: float) -> tuple[Tally, float]:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        start = time.monotonic()
        deadline = start + seconds
        await asyncio.gather(
            *(client_loop(http, pools, deadline, seed, tally) for seed in range(clients))
        )
        return tally, time.monotonic() - start


class RssSampler(threading.Thread):
    """The server's resident memory (with any children) once a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def rss(self) -> int:
        processes = [self.process, *self.process.children(recursive=True)]
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):  # a child may have just exited
                total += process.memory_info().rss
        return total

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - start, self.rss()))
            self.stop.wait(1.0)


def memory_figures(samples: list[tuple[float, int]]) -> dict:
    values = [rss / 1024**2 for _, rss in samples]
    quarter = max(1, len(values) // 4)
    first, last = statistics.mean(values[:quarter]), statistics.mean(values[-quarter:])
    half = len(values) // 2
    second_half = values[half:]
    third = statistics.mean(values[half : len(values) - quarter] or values[half:])
    return {
        "samples": len(values),
        "start_mb": round(values[0], 1),
        "first_quarter_mb": round(first, 1),
        "last_quarter_mb": round(last, 1),
        "last_over_first": round(last / first, 3),
        "third_quarter_mb": round(third, 1),
        "last_over_third": round(last / third, 3),
        "second_half_growth_mb": round(second_half[-1] - second_half[0], 1),
        "peak_mb": round(max(values), 1),
    }


def summarise(tally: Tally, wall_s: float) -> dict:
    kinds = {}
    for kind, values in sorted(tally.latencies.items()):
        kinds[kind] = {
            "requests": len(values),
            "p50_ms": round(statistics.median(values), 1),
            "p95_ms": round(percentile(values, 95), 1),
            "p99_ms": round(percentile(values, 99), 1),
            "max_ms": round(max(values), 1),
        }
    requests = sum(len(v) for v in tally.latencies.values()) + sum(
        1 for e in tally.errors if ": " in e and e.split(": ")[1].split()[0].endswith("Error")
    )
    return {
        "requests": requests,
        "errors": len(tally.errors),
        "error_samples": tally.errors[:10],
        "wall_s": round(wall_s, 1),
        "requests_per_s": round(requests / wall_s, 1),
        "kinds": kinds,
    }


def serve(data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = subprocess_env(
        TILEDETECT_DATA_DIR=str(data_dir), TILEDETECT_DETECTION_CACHE_BYTES=str(CACHE_BYTES)
    )
    cmd = [str(BIN / "tiledetect"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning", "--no-access-log"]
    with log.open("wb") as handle:
        process = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/healthz", process, log)
    return process, base


def run(seconds: float, clients: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="tiledetect-bench-soak-") as tmp:
        workdir = Path(tmp)
        data_dir = workdir / "data"
        tif = workdir / "scene.tif"
        spec = SceneSpec(width=SCENE_SIZE, height=SCENE_SIZE, seed=SCENE_SEED)
        write_scene(spec, tif, workdir / "scene.geojson")
        image_id = ingest(tif, data_dir)
        detector_id, _ = register_detector(workdir, data_dir)
        log = workdir / "server.log"
        process, base = serve(data_dir, log)
        try:
            image = httpx.get(f"{base}/api/images/{image_id}", timeout=30).json()
            layer = f"{base}/api/detectors/{detector_id}/images/{image_id}"
            tilejson = httpx.get(f"{layer}/WebMercatorQuad/tilejson.json", timeout=60).json()
            pools = make_pools(base, image, detector_id, tilejson["maxzoom"])
            sampler = RssSampler(process.pid)
            sampler.start()
            tally, wall_s = asyncio.run(load(pools, clients, seconds))
            sampler.stop.set()
            sampler.join()
            if process.poll() is not None:
                raise BenchError(f"the server died during the soak:\n{log_tail(log)}")
            healthy = httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        finally:
            stop_process(process)
    return {
        "clients": clients,
        "seconds": seconds,
        "detection_cache_bytes": CACHE_BYTES,
        "pool_sizes": {kind: len(urls) for kind, urls in pools.urls.items()},
        "load": summarise(tally, wall_s),
        "memory": memory_figures(sampler.samples),
        "healthy_after": healthy,
    }


def report(result: dict, context: dict) -> None:
    load_, memory = result["load"], result["memory"]
    print(
        f'soak machine cpus={context["cpus"]} model="{context["cpu_model"]}" '
        f"clients={result['clients']} seconds={result['seconds']:.0f} "
        f"detection_cache_mb={result['detection_cache_bytes'] // 1024**2}"
    )
    print(
        f"soak load requests={load_['requests']} errors={load_['errors']} (target 0) "
        f"{'OK' if load_['errors'] == 0 else 'MISSED'} requests_per_s={load_['requests_per_s']}"
    )
    for kind, figures in load_["kinds"].items():
        print(
            f"soak latency kind={kind} requests={figures['requests']} p50_ms={figures['p50_ms']} "
            f"p95_ms={figures['p95_ms']} p99_ms={figures['p99_ms']} max_ms={figures['max_ms']}"
        )
    # Bounded caches fill during the first minute (GDAL's block cache, the detection caches,
    # onnxruntime's arena), so flat means no growth once warm: the last quarter against the third.
    flat = memory["last_over_third"] <= 1.05
    print(
        f"soak memory rss_first_quarter_mb={memory['first_quarter_mb']} "
        f"rss_third_quarter_mb={memory['third_quarter_mb']} "
        f"rss_last_quarter_mb={memory['last_quarter_mb']} "
        f"warm_ratio={memory['last_over_third']} warmup_ratio={memory['last_over_first']} "
        f"second_half_growth_mb={memory['second_half_growth_mb']} peak_mb={memory['peak_mb']} "
        f"(target flat once warm: last/third quarter <= 1.05) {'OK' if flat else 'MISSED'}"
    )
    for error in load_["error_samples"]:
        print(f"soak error {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    result = run(args.seconds, args.clients)
    context = machine()
    report(result, context)
    write_results("soak", {"result": result, "context": context})
    return 0 if result["load"]["errors"] == 0 and result["healthy_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
