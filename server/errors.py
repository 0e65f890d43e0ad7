"""The one place where domain errors become HTTP status codes."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from morecantile.errors import InvalidZoomError, TileArgParsingError
from rasterio.errors import RasterioIOError
from rio_tiler.errors import InvalidBufferSize, PointOutsideBounds
from sqlalchemy.exc import DBAPIError
from starlette import status
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers

from catalog.db import is_unavailable, unavailable_reason
from catalog.errors import (
    AuthenticationError,
    ConflictError,
    ImageNotReadyError,
    InvalidNameError,
    NotFoundError,
    RemoteCogRefusedError,
)
from catalog.quotas import LimitExceededError, RateLimitedError, UploadTooLargeError
from export.run import ExportInputError
from export.writers import UnknownFormatError
from inference.errors import IncompatibleImageError, InvalidDetectorError
from tiles.errors import InvalidImageError, InvalidTileRequestError, OutsideGridError, gdal_reason
from trainer.annotations import AnnotationError


class UploadError(Exception):
    """A malformed upload request; carries its own status code."""

    def __init__(self, message: str, status_code: int = status.HTTP_400_BAD_REQUEST) -> None:
        super().__init__(message)
        self.status_code = status_code


STATUS_CODES: dict[type[Exception], int] = {
    **DEFAULT_STATUS_CODES,
    NotFoundError: status.HTTP_404_NOT_FOUND,
    ImageNotReadyError: status.HTTP_409_CONFLICT,
    ConflictError: status.HTTP_409_CONFLICT,
    RemoteCogRefusedError: status.HTTP_403_FORBIDDEN,
    InvalidNameError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    InvalidImageError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    InvalidDetectorError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    IncompatibleImageError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    InvalidZoomError: status.HTTP_404_NOT_FOUND,
    OutsideGridError: status.HTTP_404_NOT_FOUND,
    PointOutsideBounds: status.HTTP_404_NOT_FOUND,
    InvalidBufferSize: status.HTTP_400_BAD_REQUEST,
    InvalidTileRequestError: status.HTTP_400_BAD_REQUEST,
    TileArgParsingError: status.HTTP_400_BAD_REQUEST,
    ExportInputError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    AnnotationError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    UnknownFormatError: status.HTTP_422_UNPROCESSABLE_CONTENT,
}


# Seconds a client is asked to wait after a 503: a database restart usually takes a few.
RETRY_AFTER_S = 5


def install_error_handlers(app: FastAPI) -> None:
    add_exception_handlers(app, STATUS_CODES)

    @app.exception_handler(AuthenticationError)
    async def _unauthenticated(_request, exc: AuthenticationError):
        from server.auth import MissingTokenError

        # RFC 6750: name the scheme, and say when a token was sent but is not good.
        challenge = 'Bearer realm="tiledetect"'
        if not isinstance(exc, MissingTokenError):
            challenge += ', error="invalid_token"'
        return JSONResponse(
            {"detail": str(exc)},
            status_code=status.HTTP_401_UNAUTHORIZED,
            headers={"WWW-Authenticate": challenge},
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        # Python's json reads NaN and Infinity; strict JSON cannot echo them back in the errors.
        detail = _finite(jsonable_encoder(exc.errors()))
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(RasterioIOError)
    async def _unreadable_image(request, exc: RasterioIOError):
        # Only catalogue COGs are ever opened, so this is damage on the server's side (5xx), but
        # it says which image and what GDAL found instead of rasterio's "Read failed".
        image_id = request.path_params.get("image_id")
        what = f"the stored data of image {image_id}" if image_id else "the stored data"
        return JSONResponse(
            {
                "detail": f"{what} cannot be read ({gdal_reason(exc)}); the file may be "
                "damaged: delete the image and ingest it again"
            },
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(_request, exc: DBAPIError):
        if not is_unavailable(exc):
            raise exc  # a fault, not an outage: a 500 as before
        # The outage rolled back the request's transaction, or it never began.
        return JSONResponse(
            {
                "detail": f"the catalogue database is unavailable ({unavailable_reason(exc)}): "
                "nothing was changed; retry in a few seconds"
            },
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(LimitExceededError)
    async def _over_a_limit(_request, exc: LimitExceededError):
        # The body names the limit and the use beside the words, for clients that act on it.
        headers = {}
        code = status.HTTP_403_FORBIDDEN
        if isinstance(exc, UploadTooLargeError):
            code = status.HTTP_413_CONTENT_TOO_LARGE
        elif isinstance(exc, RateLimitedError):
            code = status.HTTP_429_TOO_MANY_REQUESTS
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return JSONResponse(exc.as_dict(), status_code=code, headers=headers)

    @app.exception_handler(UploadError)
    async def _upload_error(_request, exc: UploadError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


def _finite(value: Any) -> Any:
    """Non-finite floats as the strings Python spells them ('nan', 'inf'), for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
