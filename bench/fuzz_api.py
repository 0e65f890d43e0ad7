"""The long property-based run of the API: schemathesis's CLI against a real server.

`tests/test_schemathesis.py` keeps a bounded, derandomised run in `make test`; this one runs
every phase of the current schemathesis (examples, coverage, fuzzing, stateful links) with many
more examples against a `tiledetect serve` process seeded with an image and a detector, and
counts the cases generated and the distinct failures (any 5xx, or no answer within the request
timeout). The server's address space is capped, so a request that would allocate gigabytes
fails as a server error here instead of taking the machine down; its peak RSS is reported.

    python -m bench.fuzz_api [--examples N] [--seconds S]

Exits nonzero when anything failed; the NDJSON report (each failure with a curl line to
reproduce it) is kept under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from bench.common import (
    BIN,
    REPO,
    RESULTS_DIR,
    BenchError,
    free_port,
    machine,
    stop_process,
    subprocess_env,
    wait_ready,
    write_results,
)

SERVER_MEMORY_CAP = 12 * 1024**3  # bytes of address space; the machine has 24 GiB
REQUEST_TIMEOUT_S = 60
# Deleting would remove the seeds; a real training per example would outlast any budget
# (tests/test_training.py covers both).
EXCLUDED = ["--exclude-method", "DELETE", "--exclude-path-regex", "/train$"]


def start_server(data_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (SERVER_MEMORY_CAP, SERVER_MEMORY_CAP))

    cmd = [str(BIN / "tiledetect"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = subprocess_env(TILEDETECT_DATA_DIR=str(data_dir))
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=cap_memory
        )


def seed(base: str, workdir: Path) -> dict[str, str]:
    """An image and an imported detector, so generated ids can be replaced by real ones."""
    from tests.conftest import write_rgb_tif
    from tests.hostile_corpus import tiny_detector

    tif = write_rgb_tif(workdir / "rgb.tif", width=512, height=512)
    with httpx.Client(base_url=base, timeout=120) as client:
        with tif.open("rb") as handle:
            image = client.post("/api/images", files={"file": ("rgb.tif", handle)})
        image.raise_for_status()
        image_id = image.json()["image"]["id"]
        deadline = time.monotonic() + 120
        while client.get(f"/api/images/{image_id}").json()["status"] != "ready":
            if time.monotonic() > deadline:
                raise BenchError("the seed image was not ingested in 120 s")
            time.sleep(0.5)
        onnx = tiny_detector(workdir / "tiny.onnx")
        detector = client.post(
            "/api/detectors/import", files={"file": ("tiny.onnx", onnx.read_bytes())}
        )
        detector.raise_for_status()
    return {"image_id": image_id, "detector_id": detector.json()["id"]}


def watch_rss(process: subprocess.Popen, peak: list[int], stop: threading.Event) -> None:
    handle = psutil.Process(process.pid)
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], handle.memory_info().rss)
        except psutil.Error:
            return
        stop.wait(0.5)


def run_schemathesis(base: str, ids: dict, workdir: Path, examples: int, seconds: float) -> dict:
    config = workdir / "schemathesis.toml"
    config.write_text(
        "[parameters]\n" + "".join(f'"path.{name}" = "{value}"\n' for name, value in ids.items())
    )
    report = workdir / "report.ndjson"
    cmd = [
        str(BIN / "st"),
        "--config-file",
        str(config),
        "run",
        f"{base}/openapi.json",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(examples),
        "--checks",
        "not_a_server_error",
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--max-time",
        str(int(seconds)),
        "--workers",
        "2",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        *EXCLUDED,
    ]
    began = time.monotonic()
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    output = done.stdout + done.stderr
    (workdir / "schemathesis.log").write_text(output)
    counts = re.search(r"(\d+) generated(?:, (\d+) found (\d+) unique failures)?", output)
    errored = re.search(r"(\d+) errored", output)
    if counts is None:
        raise BenchError(f"no summary in schemathesis's output:\n{output[-4000:]}")
    return {
        "cases": int(counts.group(1)),
        "failures": int(counts.group(3) or 0),
        "errors": int(errored.group(1)) if errored else 0,
        "seconds": round(time.monotonic() - began, 1),
        "exit_code": done.returncode,
        "report": report,
        "log": output,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="cases per operation")
    parser.add_argument("--seconds", type=float, default=1800, help="stop generating after")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tiledetect-bench-fuzz-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(workdir / "data", port, workdir / "server.log")
        peak, stop = [0], threading.Event()
        try:
            wait_ready(f"{base}/healthz", server, workdir / "server.log", timeout_s=180)
            ids = seed(base, workdir)
            watcher = threading.Thread(target=watch_rss, args=(server, peak, stop), daemon=True)
            watcher.start()
            result = run_schemathesis(base, ids, workdir, args.examples, args.seconds)
            alive = server.poll() is None and httpx.get(f"{base}/healthz").status_code == 200
        finally:
            stop.set()
            stop_process(server)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        kept = RESULTS_DIR / "fuzz_api-report.ndjson"
        if result["report"].exists():
            kept.write_bytes(result["report"].read_bytes())
        if result["failures"] or result["errors"]:
            log = result["log"]
            found = [i for i in (log.find("ERRORS"), log.find("FAILURES")) if i >= 0]
            first = min(found, default=0)
            print(log[max(first - 40, 0) :][:12000], file=sys.stderr)
    figures = {
        "cases": result["cases"],
        "failures": result["failures"],
        "errors": result["errors"],
        "seconds": result["seconds"],
        "examples_per_operation": args.examples,
        "server_peak_rss_mb": round(peak[0] / 1024**2),
        "server_alive_after": alive,
    }
    print(f"fuzz_api {json.dumps(figures)}")
    write_results("fuzz_api", machine() | figures)
    return 0 if not (result["failures"] or result["errors"]) and alive else 1


if __name__ == "__main__":
    sys.exit(main())
