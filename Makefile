# tiledetect: `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# GPU machines get onnxruntime-gpu and CUDA torch; everywhere else the CPU builds.
ACCEL := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
DATA_DIR ?= data
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install sysdeps run demo test bench lint clean

# Quick when nothing changed: the stamp is newer than pyproject.toml.
install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,$(ACCEL)]"
	@touch $(STAMP)

# Debian packages the tests drive as real clients (GDAL's command-line tools).
sysdeps:
	@bash scripts/sysdeps.sh

demo: install
	TILEDETECT_DATA_DIR=$(DATA_DIR) $(VENV)/bin/tiledetect demo

run: install demo
	TILEDETECT_DATA_DIR=$(DATA_DIR) $(VENV)/bin/tiledetect serve --host $(HOST) --port $(PORT)

test: install sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/run_all.py

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
