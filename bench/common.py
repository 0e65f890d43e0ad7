"""Helpers every benchmark shares: loopback servers as subprocesses, machine facts, results.

Benchmarks run servers as real uvicorn processes (not in-process test clients) so the figures
include what production pays for: the event loop, HTTP parsing and the thread pool.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS_DIR = REPO / "bench" / "results"
UVICORN_FLAGS = [
    "--host",
    "127.0.0.1",
    "--workers",
    "1",
    "--log-level",
    "warning",
    "--no-access-log",
]


class BenchError(RuntimeError):
    """A benchmark could not measure what it meant to; the run must fail loudly."""


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment plus the repo on PYTHONPATH: packages newer than the editable install
    (scenes, bench) import the same way in every child."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def start_uvicorn(
    target: str, port: int, log_path: Path, env: dict[str, str], factory: bool = False
) -> subprocess.Popen:
    """One uvicorn worker on loopback; stdout and stderr go to `log_path` for post-mortems."""
    cmd = [sys.executable, "-m", "uvicorn", target, *UVICORN_FLAGS, "--port", str(port)]
    if factory:
        cmd.append("--factory")
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 60) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it dies or never does."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchError(f"server exited ({process.returncode}):\n{log_tail(log_path)}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise BenchError(f"{url} not ready after {timeout_s:.0f}s:\n{log_tail(log_path)}")


def stop_process(process: subprocess.Popen) -> None:
    """Terminate, then kill if it lingers: a benchmark never leaves servers behind."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def log_tail(path: Path, chars: int = 4000) -> str:
    """The end of a server log, for error messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no log: {exc})"


def cpu_model() -> str:
    """The CPU's marketing name: figures only compare on the same kind of machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine() -> dict[str, object]:
    """CPU count and model, recorded with every result."""
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model()}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linearly interpolated like numpy's default."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


def write_results(name: str, payload: dict) -> Path:
    """Keep the figures as JSON under bench/results/ (gitignored) for later comparison."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
