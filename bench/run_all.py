"""Run every benchmark: each `bench/*.py` module with a top-level `main()`, in name order.

Each runs as `python -m bench.<name>` in its own subprocess from the repo root, so imports work
from `make bench` and one crashing benchmark does not stop the others. Exits nonzero if any
benchmark did.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
NOT_BENCHMARKS = {"__init__", "run_all", "common", "bare_titiler"}


def defines_main(path: Path) -> bool:
    """True if the module has a top-level `def main`, found without importing it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def benchmarks() -> list[str]:
    """Module names of the benchmarks, sorted so runs are comparable."""
    return sorted(
        path.stem
        for path in BENCH_DIR.glob("*.py")
        if path.stem not in NOT_BENCHMARKS and defines_main(path)
    )


def run_one(name: str) -> bool:
    """Run one benchmark, its output going straight to ours; True if it succeeded."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=REPO)
    elapsed = time.monotonic() - start
    status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    print(f"run_all {name} {status} in {elapsed:.1f}s", flush=True)
    return done.returncode == 0


def main() -> int:
    names = benchmarks()
    if not names:
        print("run_all: no benchmarks found", file=sys.stderr)
        return 1
    start = time.monotonic()
    failed = [name for name in names if not run_one(name)]
    print(
        f"run_all total {time.monotonic() - start:.1f}s, {len(names)} benchmark(s), "
        f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
