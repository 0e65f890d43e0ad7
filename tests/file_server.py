"""A small HTTP file server for the remote-COG tests, run as its own uvicorn process:
`TD_FILES_DIR` served under /cogs with Range support (Starlette's StaticFiles, what GDAL's
/vsicurl/ needs), /moved.tif redirecting to `TD_REDIRECT_TO`, /whole.tif ignoring Range, and
/_hits listing the paths requested so far (so a test can tell a host was never contacted)."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles


def create() -> Starlette:
    folder = Path(os.environ["TD_FILES_DIR"])
    redirect_to = os.environ.get("TD_REDIRECT_TO", "http://127.0.0.1:9/")
    hits: list[str] = []

    def whole(_request) -> Response:
        return Response((folder / "scene.tif").read_bytes(), media_type="image/tiff")

    app = Starlette(
        routes=[
            Route("/_hits", lambda _r: JSONResponse(hits)),
            Route("/moved.tif", lambda _r: RedirectResponse(redirect_to, status_code=302)),
            Route("/whole.tif", whole),
            Mount("/cogs", StaticFiles(directory=folder)),
        ]
    )

    async def counting(scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/_hits":
            hits.append(scope["path"])
        await app(scope, receive, send)

    return counting
