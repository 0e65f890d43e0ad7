"""Pure ASGI middlewares (no BaseHTTPMiddleware: it costs latency on every tile)."""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# titiler 2 takes ?tilesize=; web maps still ask for retina tiles as .../{y}@2x.png.
_SCALE_SUFFIX = re.compile(
    r"^(?P<head>.*/tiles/[^/]+/\d+/\d+/\d+)@(?P<scale>[1-4])x(?P<ext>\.\w+)?$"
)
TILE_SIZE = 256


class TileScaleSuffixMiddleware:
    """Rewrites `{y}@{scale}x[.{format}]` to `{y}[.{format}]?tilesize=256*scale`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "@" in scope["path"]:
            match = _SCALE_SUFFIX.match(scope["path"])
            if match:
                query = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
                if not any(key == "tilesize" for key, _ in query):
                    query.append(("tilesize", str(TILE_SIZE * int(match["scale"]))))
                path = match["head"] + (match["ext"] or "")
                scope = dict(
                    scope, path=path, raw_path=path.encode(), query_string=urlencode(query).encode()
                )
        await self.app(scope, receive, send)


# The documents whose URLs a client follows on its own (TileJSON, WMTS capabilities).
_DOCUMENTS = re.compile(r"(/tilejson\.json|/WMTSCapabilities\.xml)$")


class DocumentTokenMiddleware:
    """Moves a Bearer token of a TileJSON or WMTS request into its query (`?token=`).

    Document builders (titiler's and ours) copy the request's query into every URL they write,
    so the tile URLs a GIS or map client reads then work without the header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _DOCUMENTS.search(scope["path"]):
            header = Headers(scope=scope).get("authorization", "")
            scheme, _, token = header.partition(" ")
            query = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
            if scheme.lower() == "bearer" and token.strip() and all(k != "token" for k, _ in query):
                query.append(("token", token.strip()))
                scope = dict(scope, query_string=urlencode(query).encode())
        await self.app(scope, receive, send)


class CacheHeadersMiddleware:
    """ETag and Cache-Control on image data, and 304 for a matching If-None-Match.

    `long_lived` paths (tiles, previews) may be cached for `max_age` seconds: an image id's
    pixels never change. Other matched paths (TileJSON, WMTS, info) must revalidate. With auth on
    (`shared=False`) tiles are `private`: a shared cache must not hand them to other callers.
    """

    def __init__(
        self, app: ASGIApp, match: str, long_lived: str, max_age: int, shared: bool = True
    ) -> None:
        self.app = app
        self.match = re.compile(match)
        self.long_lived = re.compile(long_lived)
        self.max_age = max_age
        self.visibility = "public" if shared else "private"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or not self.match.search(scope["path"])
        ):
            await self.app(scope, receive, send)
            return

        start: Message | None = None
        chunks: list[bytes] = []

        async def buffer(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            assert start is not None
            await self._finish(scope, start, b"".join(chunks), send)

        await self.app(scope, receive, buffer)

    async def _finish(self, scope: Scope, start: Message, body: bytes, send: Send) -> None:
        if start["status"] != 200:
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
        headers = MutableHeaders(raw=list(start["headers"]))
        headers["etag"] = etag
        if self.long_lived.search(scope["path"]):
            headers["cache-control"] = f"{self.visibility}, max-age={self.max_age}"
        else:
            headers["cache-control"] = "no-cache"
        if etag in _if_none_match(scope):
            del headers["content-length"]
            del headers["content-type"]
            await send({"type": "http.response.start", "status": 304, "headers": headers.raw})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({**start, "headers": headers.raw})
        await send({"type": "http.response.body", "body": body})


def _if_none_match(scope: Scope) -> set[str]:
    value = Headers(scope=scope).get("if-none-match", "")
    return {tag.strip().removeprefix("W/") for tag in value.split(",") if tag.strip()}


class JsonBodyLimitMiddleware:
    """Request bodies outside the streamed uploads (which enforce their own, larger limit) must
    be JSON and at most `max_bytes`.

    The body is read here first, up to the limit (checked on the declared Content-Length and on
    the bytes as they arrive, so a chunked body cannot slip past), then handed on whole: the
    endpoint never sees more than `max_bytes`, and nothing has started when the 413 goes out.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, uploads: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = re.compile(uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE")
            or self.uploads.search(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(send, 413, self._too_large())
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                await _refuse(send, 413, self._too_large())
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if body and not (media_type == "application/json" or media_type.endswith("+json")):
            await _refuse(
                send,
                415,
                f"send the request body as JSON (Content-Type: application/json), not "
                f"{media_type or 'without a content type'}",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return (
            f"the request body is larger than the limit of {self.max_bytes} bytes "
            "(TILEDETECT_MAX_JSON_BYTES)"
        )


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
