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

# The same script the Dockerfile's build stages run, so CI tests the image's install step.
$(STAMP): pyproject.toml Makefile scripts/install-python.sh
	PYTHON=$(PYTHON) bash scripts/install-python.sh $(ACCEL) $(VENV) dev --editable
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
