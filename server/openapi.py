"""The OpenAPI document, corrected where FastAPI's default does not describe what we send."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _domain_errors_are_messages(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _domain_errors_are_messages(schema: dict[str, Any]) -> None:
    """A 422 carries FastAPI's list of field errors when the request does not parse, and one
    message saying what is wrong when the domain refuses it (server/errors.py): document both."""
    error = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
    if not error:
        return
    listed = error["properties"]["detail"]
    error["properties"]["detail"] = {
        "title": "Detail",
        "anyOf": [{"type": "string"}, {k: v for k, v in listed.items() if k != "title"}],
    }
