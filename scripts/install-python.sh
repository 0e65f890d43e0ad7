#!/usr/bin/env bash
# Installs tiledetect's Python side into a virtualenv. The one install step shared by
# `make install` (so CI's `make test` runs it) and the Dockerfile's build stages.
#
#   scripts/install-python.sh ACCEL VENV [EXTRAS] [--editable]
#     ACCEL   cpu: onnxruntime + torch 2.13.0 CPU build; gpu: onnxruntime-gpu + CUDA torch
#     VENV    the virtualenv to create (when missing) and install into (relative: to the checkout)
#     EXTRAS  more extras, comma-separated (dev for tests, postgres for an image)
#     --editable  install the checkout in place (development); an image installs a copy
# Environment: PYTHON (interpreter that creates the venv, default python3.11), TORCH_INDEX_URL
# (an extra package index for torch, e.g. PyTorch's CPU or CUDA index; unset on machines whose
# pip already finds the wanted torch build). A gpu install takes its versions from
# scripts/constraints-gpu.txt (onnxruntime-gpu and torch built for the same CUDA).
set -euo pipefail
usage="usage: $0 cpu|gpu VENV [EXTRAS] [--editable]"
accel=${1:?$usage}
venv=${2:?$usage}
extras=${3:-}
editable=${4:-}
case "$accel" in cpu | gpu) ;; *) echo "$usage" >&2; exit 2 ;; esac
case "$editable" in "" | --editable) ;; *) echo "$usage" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
[ -x "$venv/bin/python" ] || "${PYTHON:-python3.11}" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
args=()
# An extra index, not a replacement: every other package still comes from the default index,
# and pip prefers torch's local build (2.13.0+cpu) over the plain version the pin also matches.
if [ -n "${TORCH_INDEX_URL:-}" ]; then args=(--extra-index-url "$TORCH_INDEX_URL"); fi
if [ "$accel" = gpu ]; then args+=(--constraint scripts/constraints-gpu.txt); fi
target=".[${extras:+$extras,}$accel]"
if [ "$editable" = --editable ]; then
  "${pip[@]}" install -q "${args[@]}" -e "$target"
else
  "${pip[@]}" install -q "${args[@]}" "$target"
fi
