"""How long `tiledetect demo` takes the first time (what `make run` waits for): target < 60 s.

Runs the real command in a fresh data directory and reports scene generation and ingest apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, write_results

TARGET_SECONDS = 60.0
BIN = Path(sys.executable).parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tiledetect-bench-demo-") as workdir:
        data_dir = Path(workdir) / "data"
        start = time.monotonic()
        done = subprocess.run(
            [str(BIN / "tiledetect"), "demo", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - start
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        scene_bytes = (data_dir / "demo" / "scene.tif").stat().st_size
        cog_bytes = sum(p.stat().st_size for p in (data_dir / "blobs").rglob("*.tif"))

        start = time.monotonic()
        subprocess.run(
            [str(BIN / "tiledetect"), "demo", "--data-dir", str(data_dir)],
            capture_output=True,
            check=True,
        )
        second_run = time.monotonic() - start

    verdict = "OK" if seconds < TARGET_SECONDS else "MISSED"
    info = machine()
    print(f'demo_scene machine cpus={info["cpus"]} model="{info["cpu_model"]}"')
    print(
        f"demo_scene first_run_s={seconds:.1f} (target < {TARGET_SECONDS:.0f} s) {verdict} "
        f"objects={summary['counts']} source_mb={scene_bytes / 1e6:.0f} "
        f"cog_mb={cog_bytes / 1e6:.0f}"
    )
    print(f"demo_scene second_run_s={second_run:.1f} (already present: checks only)")
    write_results(
        "demo_scene",
        {
            "first_run_s": seconds,
            "second_run_s": second_run,
            "counts": summary["counts"],
            "machine": info,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
