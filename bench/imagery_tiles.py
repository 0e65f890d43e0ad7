"""Imagery tile throughput: tiledetect against bare titiler reading the very same COG.

tiledetect's tile endpoint is titiler plus an image-id lookup and two middlewares; this measures
what those cost. Both servers run as one uvicorn worker with identical flags, get the same tiles
at the image's native zoom in the same order from the same client, in alternating rounds so
machine noise lands on both. Targets: at least 0.9x bare titiler's tiles/s, at most 1.1x its p95.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import httpx
import morecantile

from bench.common import (
    BIN,
    BenchError,
    free_port,
    machine,
    percentile,
    start_uvicorn,
    stop_process,
    subprocess_env,
    wait_ready,
    write_results,
)
from scenes.synthetic import SceneSpec, write_scene

NAME = "imagery_tiles"
SCENE_SIZE = 6144  # 0.3 m at ~48.7 N: native zoom 18, ~19x19 tiles (4096 px gives 169)
SCENE_SEED = 1
TILE_COUNT = 300
CONCURRENCY = 8
ROUNDS = 3
WARMUP_TILES = 16
SAMPLE_SEED = 0
TARGET_THROUGHPUT = 0.9  # tiledetect tiles/s over bare titiler's, at least
TARGET_P95 = 1.1  # tiledetect p95 over bare titiler's, at most
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Server:
    """A running server and how to ask it for a tile."""

    name: str
    base_url: str
    tile_path: str  # with {z}/{x}/{y} placeholders
    query: list[tuple[str, str]]

    def tile_url(self, tile: morecantile.Tile) -> str:
        path = self.tile_path.format(z=tile.z, x=tile.x, y=tile.y)
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{self.base_url}{path}{query}"


@dataclass
class Measurements:
    """Everything one server's rounds recorded."""

    round_wall_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        per_round = [TILE_COUNT / wall for wall in self.round_wall_s]
        return {
            "tiles_per_s": statistics.median(per_round),
            "tiles_per_s_rounds": per_round,
            "p50_ms": percentile(self.latencies_ms, 50),
            "p95_ms": percentile(self.latencies_ms, 95),
            "mean_ms": statistics.fmean(self.latencies_ms),
            "max_ms": max(self.latencies_ms),
        }


def make_scene(workdir: Path) -> Path:
    """The synthetic aerial scene, written as a plain GeoTIFF to be ingested."""
    tif = workdir / "scene.tif"
    write_scene(
        SceneSpec(width=SCENE_SIZE, height=SCENE_SIZE, seed=SCENE_SEED),
        tif,
        workdir / "scene.geojson",
    )
    return tif


def ingest(tif: Path, data_dir: Path) -> str:
    """`tiledetect ingest`, as a user runs it; returns the new image id."""
    done = subprocess.run(
        [str(BIN / "tiledetect"), "ingest", str(tif), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    if done.returncode != 0:
        raise BenchError(f"tiledetect ingest failed ({done.returncode}):\n{done.stderr[-4000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    if record.get("status") != "ready":
        raise BenchError(f"ingest did not finish: {record}")
    return record["id"]


def cog_path(data_dir: Path, image_id: str) -> Path:
    """Where the blob store keeps the image's COG: bare titiler reads this same file."""
    path = data_dir / "blobs" / "images" / image_id / f"{image_id}.tif"
    if not path.is_file():
        raise BenchError(f"no COG at {path}")
    return path.resolve()


def prime_page_cache(path: Path) -> None:
    """Read the COG once so neither server's first round pays for cold disk reads."""
    with path.open("rb") as f:
        while f.read(1 << 24):
            pass


@contextmanager
def uvicorn_server(
    target: str, workdir: Path, ready_path: str, factory: bool = False, **env: str
) -> Iterator[str]:
    """A uvicorn server for the duration of the block; yields its base URL, always stops it."""
    port = free_port()
    log = workdir / f"{target.replace(':', '_')}.log"
    process = start_uvicorn(target, port, log, subprocess_env(**env), factory=factory)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url + ready_path, process, log)
        yield base_url
    finally:
        stop_process(process)


def image_record(base_url: str, image_id: str) -> dict:
    """tiledetect's description of the image: zoom range, bounds, display parameters."""
    response = httpx.get(f"{base_url}/api/images/{image_id}", timeout=30)
    response.raise_for_status()
    return response.json()


def sample_tiles(image: dict) -> list[morecantile.Tile]:
    """TILE_COUNT distinct tiles at native zoom over the image, the same ones on every run."""
    tms = morecantile.tms.get("WebMercatorQuad")
    zoom = image["maxzoom"]
    covering = sorted(tms.tiles(*image["bounds_wgs84"], zooms=[zoom]), key=lambda t: (t.x, t.y))
    if len(covering) < TILE_COUNT:
        raise BenchError(f"only {len(covering)} tiles at z{zoom}; need {TILE_COUNT}")
    return random.Random(SAMPLE_SEED).sample(covering, TILE_COUNT)


def round_order(tiles: list[morecantile.Tile], round_index: int) -> list[morecantile.Tile]:
    """A per-round shuffle, identical for both servers, so neither gets a friendlier order."""
    order = list(tiles)
    random.Random(round_index).shuffle(order)
    return order


def check_tile(url: str, response: httpx.Response) -> None:
    """Every answer must be a 200 PNG; anything else makes the figures meaningless."""
    ok = (
        response.status_code == 200
        and response.headers.get("content-type", "").startswith("image/png")
        and response.content.startswith(PNG_MAGIC)
    )
    if not ok:
        raise BenchError(f"{url}: {response.status_code} {response.content[:300]!r}")


async def fetch_all(client: httpx.AsyncClient, urls: list[str]) -> tuple[float, list[float]]:
    """GET every URL with CONCURRENCY requests in flight; returns wall seconds and latencies."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            url = queue.get_nowait()
            start = time.perf_counter()
            response = await client.get(url)
            latencies.append((time.perf_counter() - start) * 1000)
            check_tile(url, response)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - start, latencies


def new_client() -> httpx.AsyncClient:
    """The same client settings for both servers: keep-alive, one connection per worker."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    return httpx.AsyncClient(limits=limits, timeout=120)


async def measure(servers: list[Server], tiles: list[morecantile.Tile]) -> dict[str, Measurements]:
    """Warm both up, then alternate full rounds A, B, A, B, ... over the sampled tiles."""
    results = {server.name: Measurements() for server in servers}
    async with new_client() as client:
        for server in servers:
            await fetch_all(client, [server.tile_url(t) for t in tiles[:WARMUP_TILES]])
        for round_index in range(ROUNDS):
            order = round_order(tiles, round_index)
            for server in servers:
                wall, latencies = await fetch_all(client, [server.tile_url(t) for t in order])
                results[server.name].round_wall_s.append(wall)
                results[server.name].latencies_ms.extend(latencies)
    return results


def ratios(ours: dict[str, float], bare: dict[str, float]) -> dict[str, float | bool]:
    """tiledetect relative to bare titiler, and whether that meets the targets."""
    throughput = ours["tiles_per_s"] / bare["tiles_per_s"]
    p95 = ours["p95_ms"] / bare["p95_ms"]
    return {
        "tiles_per_s": throughput,
        "p95": p95,
        "met": throughput >= TARGET_THROUGHPUT and p95 <= TARGET_P95,
    }


def report(context: dict, summaries: dict[str, dict], ratio: dict) -> None:
    """One line per figure, `imagery_tiles <figure> key=value ...`."""
    info = context["machine"]
    print(
        f'{NAME} machine cpus={info["cpus"]} model="{info["cpu_model"]}" '
        f"tiles={TILE_COUNT} concurrency={CONCURRENCY} rounds={ROUNDS} "
        f"zoom={context['zoom']} scene={SCENE_SIZE}x{SCENE_SIZE}"
    )
    for name, s in summaries.items():
        rounds = ",".join(f"{v:.1f}" for v in s["tiles_per_s_rounds"])
        print(
            f"{NAME} {name} tiles_per_s={s['tiles_per_s']:.1f} p50_ms={s['p50_ms']:.1f} "
            f"p95_ms={s['p95_ms']:.1f} rounds_tiles_per_s={rounds}"
        )
    verdict = "OK" if ratio["met"] else "MISSED"
    print(
        f"{NAME} ratio tiles_per_s={ratio['tiles_per_s']:.2f}x (target >= {TARGET_THROUGHPUT}x) "
        f"p95={ratio['p95']:.2f}x (target <= {TARGET_P95}x) {verdict}"
    )


def run(workdir: Path) -> dict:
    """Scene, ingest, both servers, measurements; returns the results payload."""
    data_dir = workdir / "data"
    image_id = ingest(make_scene(workdir), data_dir)
    cog = cog_path(data_dir, image_id)
    prime_page_cache(cog)
    with ExitStack() as stack:
        ours_url = stack.enter_context(
            uvicorn_server(
                "server.app:create_app",
                workdir,
                "/healthz",
                factory=True,
                TILEDETECT_DATA_DIR=str(data_dir),
            )
        )
        bare_url = stack.enter_context(
            uvicorn_server(
                "bench.bare_titiler:app",
                workdir,
                "/info?" + urlencode({"url": str(cog)}),
            )
        )
        image = image_record(ours_url, image_id)
        params = [tuple(p.split("=", 1)) for p in (image.get("tile_params") or "").split("&") if p]
        servers = [
            Server(
                "tiledetect",
                ours_url,
                f"/api/images/{image_id}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png",
                params,
            ),
            Server(
                "bare_titiler",
                bare_url,
                "/tiles/WebMercatorQuad/{z}/{x}/{y}.png",
                [("url", str(cog)), *params],
            ),
        ]
        measured = asyncio.run(measure(servers, sample_tiles(image)))
    summaries = {name: m.summary() for name, m in measured.items()}
    return {
        "machine": machine(),
        "zoom": image["maxzoom"],
        "settings": {
            "scene": SCENE_SIZE,
            "seed": SCENE_SEED,
            "tiles": TILE_COUNT,
            "concurrency": CONCURRENCY,
            "rounds": ROUNDS,
            "warmup": WARMUP_TILES,
        },
        "servers": summaries,
        "ratio": ratios(summaries["tiledetect"], summaries["bare_titiler"]),
    }


def main() -> int:
    """Run the benchmark, print its lines, save JSON. Missed targets still exit 0."""
    with tempfile.TemporaryDirectory(prefix="bench-imagery-") as tmp:
        try:
            payload = run(Path(tmp))
        except BenchError as exc:
            print(f"{NAME} FAILED: {exc}", file=sys.stderr)
            return 1
    report(payload, payload["servers"], payload["ratio"])
    print(f"{NAME} results {write_results(NAME, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
