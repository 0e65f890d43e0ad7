"""Access control: every API and tile request acts in one project, which `request_project`
resolves from its API key (`Authorization: Bearer <token>` or `?token=<token>` for map clients
that cannot set headers). With auth off every request acts in the default project.

Routers depend on it, and endpoints pass the project to the catalogue, which answers a record of
another project as not found (catalog/projects.py).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Annotated
from urllib.parse import urlencode

from cachetools import TTLCache
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from catalog.errors import AuthenticationError
from catalog.models import DEFAULT_PROJECT
from catalog.projects import ApiKeyStore, hash_token
from catalog.quotas import Quotas, RateLimitedError
from server.ratelimit import BURST_FRACTION, RateLimiter

TOKEN_PARAM = "token"
_TOKEN_IN_URL = re.compile(r"([?&]token=)[^&\s\"]+")


class MissingTokenError(AuthenticationError):
    """The request carried no API key at all."""


class Authenticator:
    """Token -> project, remembering keys it checked for `ttl` seconds so that tiles do not
    query the database each; a revoked key stops working within that time. Each request is
    also one of its key's requests per minute (the project's limit, catalog.quotas)."""

    def __init__(
        self, keys: ApiKeyStore, enabled: bool, ttl: float, quotas: Quotas | None = None
    ) -> None:
        self.keys = keys
        self.enabled = enabled
        self.quotas = quotas
        self.rate = RateLimiter()
        self._known: TTLCache[str, str] | None = (
            TTLCache(maxsize=4096, ttl=ttl) if ttl > 0 else None
        )
        self._lock = threading.Lock()

    async def project_of(self, request: Request) -> str:
        if not self.enabled:
            await self._within_rate(DEFAULT_PROJECT, DEFAULT_PROJECT, "this server")
            return DEFAULT_PROJECT
        token = request_token(request)
        if token is None:
            raise MissingTokenError(
                "this server needs an API key: send 'Authorization: Bearer <token>' or add "
                "'?token=<token>' to the URL (an administrator creates keys with "
                "`tiledetect keys create --project NAME`)"
            )
        digest = hash_token(token)
        project = None
        if self._known is not None:
            with self._lock:
                project = self._known.get(digest)
        if project is None:
            project = await run_in_threadpool(self.keys.authenticate, token)
            if self._known is not None:
                with self._lock:
                    self._known[digest] = project
        await self._within_rate(project, digest, f"the API key {token[:12]}...")
        return project

    async def _within_rate(self, project: str, key: str, who: str) -> None:
        if self.quotas is None:
            return
        limits = self.quotas.cached_limits(project)  # no thread hop for most tiles
        if limits is None:
            limits = await run_in_threadpool(self.quotas.request_limits, project)
        per_minute = limits.requests_per_minute
        if not per_minute:
            return
        wait = self.rate.take(key, per_minute)
        if wait > 0:
            raise RateLimitedError(
                f"{who} sent more than its project's {per_minute} requests per minute "
                f"(bursts of {max(1, int(per_minute * BURST_FRACTION))}): retry in "
                f"{wait:.1f} s",
                per_minute,
                wait,
            )


def request_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
        return value.strip()
    return request.query_params.get(TOKEN_PARAM) or None


async def request_project(request: Request) -> str:
    """The dependency: the caller's project id, or 401 (AuthenticationError)."""
    return await request.app.state.authenticator.project_of(request)


Project = Annotated[str, Depends(request_project)]


class RedactTokens(logging.Filter):
    """Keeps ?token= secrets out of access logs (uvicorn logs each request's full path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_URL.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())


def url_token(request: Request) -> str:
    """`token=...` when the request carried one in its URL (DocumentTokenMiddleware puts a
    Bearer token there for documents), so the URLs a document lists work as they are."""
    token = request.query_params.get(TOKEN_PARAM)
    return urlencode({TOKEN_PARAM: token}) if token else ""


def with_token(url: str, request: Request) -> str:
    token = url_token(request)
    if not token:
        return url
    return f"{url}{'&' if '?' in url else '?'}{token}"
