# tiledetect server image (CPU). Build: docker build -t tiledetect .
# Run:   docker run -p 8000:8000 -v tiledetect-data:/data tiledetect
# The rasterio and onnxruntime wheels bundle their native libraries: no GDAL from apt is needed.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY catalog ./catalog
COPY tiles ./tiles
COPY inference ./inference
COPY trainer ./trainer
COPY scenes ./scenes
RUN pip install ".[postgres,cpu]"

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 1000 tiledetect && mkdir /data && chown tiledetect /data
COPY --from=build /opt/venv /opt/venv
COPY static /app/static
ENV PATH=/opt/venv/bin:$PATH \
    TILEDETECT_DATA_DIR=/data \
    TILEDETECT_STATIC_DIR=/app/static
USER tiledetect
WORKDIR /app
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["tiledetect", "serve", "--host", "0.0.0.0", "--port", "8000"]
