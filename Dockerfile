# tiledetect server image, CPU or GPU by the build argument ACCEL (the word `make install` uses):
#   docker build -t tiledetect:cpu .                        # CPU: onnxruntime, torch 2.13.0+cpu
#   docker build --build-arg ACCEL=gpu -t tiledetect:gpu .  # CUDA 12.8: onnxruntime-gpu, torch cu128
#   docker run -p 8000:8000 -v tiledetect-data:/data -e TILEDETECT_WORKERS=4 tiledetect:cpu
#   docker run --gpus all -p 8000:8000 -v tiledetect-data:/data tiledetect:gpu
# Both run scripts/install-python.sh, the install step of `make install`, so CI's `make test`
# exercises the CPU image's install. The same image runs the other roles of a deployment:
# `dask scheduler` and `dask worker tcp://HOST:8786 [--resources GPU=1]` (README, Deploy).
# Needs BuildKit (Docker's default builder), which builds only the stages the variant uses.
ARG ACCEL=cpu

# ---- bases: the interpreter each variant runs on, and where its torch build comes from ------
FROM python:3.11-slim-bookworm AS base-cpu
# The rasterio, pyogrio and onnxruntime wheels bundle their native libraries: no GDAL from apt.
ENV PYTHON=python3.11 \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-gpu
# CUDA 12.8 and cuDNN 9 from the base image serve onnxruntime-gpu 1.22 (PyPI's CUDA 12 build);
# torch 2.13.0 comes from PyTorch's cu128 index. The pins: scripts/constraints-gpu.txt.
# Ubuntu 24.04's Python 3.12 (tiledetect supports 3.11 and 3.12); apt versions follow the release.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHON=python3.12 \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# ---- build: the virtualenv, by the shared install script ------------------------------------
# base-${ACCEL} is a stage above, not an untagged image (hadolint cannot expand the argument).
# hadolint ignore=DL3006
FROM base-${ACCEL} AS build
ARG ACCEL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/install-python.sh scripts/constraints-gpu.txt ./scripts/
COPY server ./server
COPY catalog ./catalog
COPY tiles ./tiles
COPY inference ./inference
COPY trainer ./trainer
COPY scenes ./scenes
COPY export ./export
RUN bash scripts/install-python.sh "${ACCEL}" /opt/venv postgres

# ---- runtime: the interpreter, the virtualenv and the web app; no build files, not root -----
# hadolint ignore=DL3006
FROM base-${ACCEL} AS runtime
RUN useradd --uid 10001 --user-group --create-home tiledetect \
    && mkdir /data && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
COPY static /app/static
# Workers: uvicorn processes of one container (`serve` runs the Dask scheduler and worker for
# exports and training beside them unless TILEDETECT_DASK_SCHEDULER names a shared one).
# Auth is on: the image listens on 0.0.0.0, where `serve` refuses to run without API keys
# (create one with `docker exec CONTAINER tiledetect keys create --project NAME`).
ENV PATH=/opt/venv/bin:$PATH \
    TILEDETECT_DATA_DIR=/data \
    TILEDETECT_STATIC_DIR=/app/static \
    TILEDETECT_WORKERS=2 \
    TILEDETECT_AUTH=true
USER 10001:10001
WORKDIR /app
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["tiledetect", "serve", "--host", "0.0.0.0", "--port", "8000"]
