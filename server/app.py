"""Builds the FastAPI application. `create_app(settings)` only wires; work happens elsewhere."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from catalog.ingest import recover_interrupted
from inference.session import available_providers
from server.auth import Authenticator, redact_access_log, request_project
from server.background import BackgroundRunner
from server.errors import install_error_handlers
from server.middleware import (
    CacheHeadersMiddleware,
    DocumentTokenMiddleware,
    JsonBodyLimitMiddleware,
    TileScaleSuffixMiddleware,
)
from server.openapi import install_openapi
from server.routers import detections, exports, imagery, images, projects, training, wmts
from server.services import build_services
from server.settings import Settings
from server.uploads import remove_orphan_uploads

log = logging.getLogger("tiledetect")
VERSION = "0.1.0"

# Image data responses get ETags; tiles and previews may also be cached for long.
_IMAGE_DATA = r"^/api/images/[^/]+/(tiles/|preview|bbox/|feature|point/|info|statistics|"
_IMAGE_DATA += r"[^/]+/tilejson\.json|WMTSCapabilities\.xml)"
# Detection tiles revalidate: the latest version changes when a detector is retrained.
_IMAGE_DATA += r"|^/api/detectors/[^/]+/images/[^/]+/"
# Multipart uploads stream to disk under TILEDETECT_MAX_UPLOAD_BYTES (server/uploads.py).
_STREAMED_UPLOADS = r"^/api/(images|detectors/import)/?$"
_LONG_LIVED = r"^/api/images/[^/]+/(tiles/|preview)"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services = build_services(settings)
        recovered = recover_interrupted(services.images, services.jobs)
        if recovered:
            log.warning("marked %d interrupted job(s) as failed: %s", len(recovered), recovered)
        leftovers = (
            remove_orphan_uploads(settings.upload_dir)
            + services.training.remove_orphan_work()
            + services.detectors.remove_orphans()
        )
        if leftovers:
            log.warning("removed %d file(s) left by stopped processes", len(leftovers))
        app.state.services = services
        resumed = services.exports.resume_unfinished()
        if resumed:
            log.warning("resuming %d unfinished export(s): %s", len(resumed), resumed)
        app.state.runner = BackgroundRunner(settings.ingest_workers)
        app.state.authenticator = Authenticator(
            services.keys, settings.auth, settings.auth_cache_seconds, services.quotas
        )
        if settings.auth:
            redact_access_log()
            log.info("auth is on: API and tile requests need a project's API key")
        else:
            log.warning(
                "auth is OFF: single-user mode, every request acts in the 'default' project; "
                "keep the server on localhost (TILEDETECT_AUTH=true to require API keys)"
            )
        log.info("tiledetect ready: data in %s", settings.data_dir.resolve())
        try:
            yield
        finally:
            app.state.runner.shutdown()
            services.close()

    app = FastAPI(
        title="tiledetect",
        version=VERSION,
        description="Image catalogue, XYZ/TileJSON/WMTS imagery tiles, and detection layers.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_openapi(app)

    # Every router acts in the caller's project; /healthz, the docs and the web app's files
    # stay public.
    scoped = [Depends(request_project)]
    app.include_router(images.router, dependencies=scoped)
    app.include_router(images.jobs_router, dependencies=scoped)
    app.include_router(
        imagery.imagery_factory().router,
        prefix=imagery.IMAGE_PREFIX,
        tags=["imagery tiles"],
        dependencies=[*scoped, Depends(imagery.bounded_request)],
    )
    app.include_router(detections.router, dependencies=scoped)
    app.include_router(exports.router, dependencies=scoped)
    app.include_router(training.router, dependencies=scoped)
    app.include_router(wmts.router, dependencies=scoped)
    app.include_router(projects.router, dependencies=scoped)

    @app.get("/healthz", tags=["service"], summary="200 once the server is ready")
    def healthz() -> dict:
        services = app.state.services
        return {
            "status": "ok",
            "version": VERSION,
            "pid": os.getpid(),  # which server process answered (several serve one port)
            "database": services.db.engine.dialect.name,
            "execution_providers": available_providers(),
            "inference_batch_size": services.engine.max_batch,
        }

    app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")

    @app.get("/", include_in_schema=False)
    def home() -> FileResponse:
        return FileResponse(settings.static_dir / "index.html")

    app.add_middleware(
        CacheHeadersMiddleware,
        match=_IMAGE_DATA,
        long_lived=_LONG_LIVED,
        max_age=settings.tile_cache_seconds,
        shared=not settings.auth,
    )
    if settings.auth:
        app.add_middleware(DocumentTokenMiddleware)
    app.add_middleware(TileScaleSuffixMiddleware)
    app.add_middleware(
        JsonBodyLimitMiddleware, max_bytes=settings.max_json_bytes, uploads=_STREAMED_UPLOADS
    )
    return app
