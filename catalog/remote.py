"""Registering an existing COG by URL (https, http or s3), read where it lies and never copied.

Only hosts on the operator's allow-list (`TILEDETECT_REMOTE_COG_HOSTS`) can be named, so the
server cannot be pointed at the network behind it (SSRF):

- the URL is parsed and judged before any request: scheme https/http/s3 only (no file://, ftp,
  /vsi paths), no credentials, query or fragment, and the host must be listed (`host` means its
  default port only, `host:port` that port, `s3://bucket` a bucket on the configured S3 endpoint);
- GDAL's /vsicurl/ always follows HTTP redirects (GDAL 3.10 has no option to stop it), so an
  http(s) URL is first probed with one range request that follows nothing: a redirect, to any
  host, is refused, as is a server without range support (COG reading needs it);
- only then does GDAL open it, and it must pass the ingest checks (tiles/source.py), be a valid
  COG and be describable; a refused URL records nothing.
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from rio_cogeo.cogeo import cog_validate

from catalog.errors import RemoteCogRefusedError
from catalog.images import ImageCatalog
from catalog.models import DEFAULT_PROJECT, ImageRecord
from tiles.errors import InvalidImageError
from tiles.metadata import describe_cog
from tiles.source import SourceLimits, inspect_source

SCHEMES = ("https", "http", "s3")
DEFAULT_PORTS = {"https": 443, "http": 80}
MAX_URL_LENGTH = 2048
PROBE_TIMEOUT_S = 10.0


class InvalidRemoteUrlError(InvalidImageError):
    """The URL is malformed or of a kind that is never accepted."""


@dataclass(frozen=True)
class RemoteTarget:
    url: str  # normalised
    gdal_path: str
    host: str


def parse_remote_url(url: str, allowed: tuple[str, ...]) -> RemoteTarget:
    """Judge a URL against the allow-list without touching the network."""
    if not allowed:
        raise RemoteCogRefusedError(
            "registering remote COGs is turned off on this server; an operator can allow hosts "
            "with TILEDETECT_REMOTE_COG_HOSTS"
        )
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidRemoteUrlError(f"the URL must be 1 to {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in url):
        raise InvalidRemoteUrlError("the URL contains whitespace, control characters or '\\'")
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError as exc:
        raise InvalidRemoteUrlError(f"the URL cannot be parsed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidRemoteUrlError(
            f"scheme {parts.scheme or '(none)'!r} is not accepted; use https://, http:// or s3://"
        )
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise InvalidRemoteUrlError("credentials in the URL are not accepted")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise InvalidRemoteUrlError("the URL may not have a query string or fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidRemoteUrlError("the URL has no host")
    path = parts.path
    if not path.strip("/") or "/../" in f"{path}/" or "/./" in f"{path}/":
        raise InvalidRemoteUrlError("the URL must name a file (a path without . or ..)")
    allowed = tuple(a.lower() for a in allowed)
    if scheme == "s3":
        if explicit_port is not None or f"s3://{host}" not in allowed:
            raise RemoteCogRefusedError(f"bucket s3://{host} is not on this server's allow-list")
        key = path.lstrip("/")
        return RemoteTarget(f"s3://{host}/{key}", f"/vsis3/{host}/{key}", f"s3://{host}")
    port = explicit_port or DEFAULT_PORTS[scheme]
    netloc = f"[{host}]" if ":" in host else host
    listed = {netloc if port == DEFAULT_PORTS[scheme] else None, f"{netloc}:{port}"}
    if not listed & set(allowed):
        raise RemoteCogRefusedError(
            f"host {netloc}:{port} is not on this server's allow-list for remote COGs"
        )
    normalised = f"{scheme}://{netloc}:{port}{path}"
    # empty_dir: GDAL would otherwise list the "directory" and probe for sidecar files.
    gdal_path = f"/vsicurl?empty_dir=yes&url={normalised}"
    return RemoteTarget(normalised, gdal_path, f"{netloc}:{port}")


def probe_http(target: RemoteTarget) -> int | None:
    """One ranged GET that follows no redirect; returns the file size when the server says it.

    Refuses redirects (GDAL would follow them anywhere), error statuses and servers that
    ignore Range requests.
    """
    parts = urlsplit(target.url)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    kwargs = {"context": ssl.create_default_context()} if parts.scheme == "https" else {}
    connection = connection_class(parts.hostname, parts.port, timeout=PROBE_TIMEOUT_S, **kwargs)
    try:
        connection.request("GET", parts.path, headers={"Range": "bytes=0-16383"})
        response = connection.getresponse()
        status = response.status
        location = response.getheader("Location")
        content_range = response.getheader("Content-Range") or ""
        response.read(16384)
    except (OSError, http.client.HTTPException) as exc:
        raise InvalidImageError(f"cannot reach {target.host}: {exc}") from exc
    finally:
        connection.close()
    if 300 <= status < 400:
        raise RemoteCogRefusedError(
            f"the URL answers HTTP {status}, a redirect to {location or 'somewhere'}; redirects "
            "are not followed: register the final URL (on an allowed host)"
        )
    if status == 200:
        raise InvalidImageError(
            "the server ignores HTTP Range requests, which reading a COG in place needs"
        )
    if status != 206:
        raise InvalidImageError(f"the URL answers HTTP {status}, not the file")
    total = content_range.rpartition("/")[2]
    return int(total) if total.isdigit() else None


class RemoteCogs:
    """Validates and records remote COGs for the image catalogue."""

    def __init__(
        self, images: ImageCatalog, allowed: tuple[str, ...], limits: SourceLimits = SourceLimits()
    ) -> None:
        self.images = images
        self.allowed = allowed
        self.limits = limits

    def register(
        self, url: str, name: str | None = None, project: str = DEFAULT_PROJECT
    ) -> ImageRecord:
        target = parse_remote_url(url, self.allowed)
        size = probe_http(target) if not target.url.startswith("s3://") else None
        inspect_source(target.gdal_path, self.limits, size)  # readable, georeferenced, bands
        valid, errors, _warnings = cog_validate(target.gdal_path, quiet=True)
        if not valid:
            raise InvalidImageError(
                "the file is not a Cloud-Optimized GeoTIFF (" + "; ".join(errors[:3]) + "); "
                "convert it with gdal_translate -of COG, or upload it to be converted"
            )
        metadata = describe_cog(target.gdal_path)
        label = (name or "").strip() or target.url.rsplit("/", 1)[-1]
        return self.images.create_remote(
            label[:255], target.url, target.gdal_path, metadata, size, project
        )
