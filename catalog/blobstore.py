"""The blob store: where COGs, models and exports live, addressed by key.

The data location is a URL (`TILEDETECT_BLOB_URL`): a local directory (the default, data/blobs),
`s3://bucket/prefix` (any S3-compatible endpoint, configured by the standard AWS_* variables,
AWS_ENDPOINT_URL included) or `gs://bucket/prefix`, through obstore. Either way:

- a reader never sees a half-written blob: local writes land under a temporary name and are
  renamed into place; an object PUT (multipart for large files) appears only when complete;
- GDAL reads blobs where they lie (`gdal_path`: a file, or /vsis3/ and /vsigs/ with the config
  options of `gdal_options`), so tiles read COG blocks by range, never the whole file;
- code that needs a local file (an ONNX model to load) asks for `local_path`, a cached download.

Keys are immutable once written (ids are never reused), which is what makes the cache safe.
A `ref` (a path or a URL) names a key for another process, e.g. a Dask worker on another host:
`open_blob_store(ref)` and `fetch_local(ref)` take it there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

OBJECT_SCHEMES = ("s3", "gs")
_GDAL_PREFIX = {"s3": "/vsis3/", "gs": "/vsigs/"}
_STREAM_CHUNK = 1024 * 1024


def check_key(key: str) -> str:
    """A relative posix key; refuses keys that would escape the store."""
    parts = PurePosixPath(key).parts
    if not key or not parts or key.startswith("/") or ".." in parts or "\\" in key:
        raise ValueError(f"invalid blob key {key!r}")
    return "/".join(parts)


def _default_dir(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"tiledetect-{os.getuid()}" / name


def _staging_name(name: str) -> str:
    """A hidden temp name that keeps the suffix (some writers pick a format by it)."""
    suffix = PurePosixPath(name).suffix
    return f".{name}.{uuid.uuid4().hex[:8]}.partial{suffix}"


def _is_staging(name: str) -> bool:
    return name.startswith(".") and ".partial" in name


class BlobStore(ABC):
    """What every store offers; see the module docstring for the guarantees."""

    url: str
    is_local: bool

    @abstractmethod
    def staging_path(self, key: str) -> Path:
        """A private local temp file to write a blob into before `commit`."""
        ...

    @abstractmethod
    def commit(self, staging: Path, key: str) -> int:
        """Publish a finished staging file under `key` (consuming it); returns its size."""
        ...

    def put_file(self, source: Path, key: str) -> int:
        """Publish a copy of a finished local file under `key`; returns its size."""
        staging = self.staging_path(key)
        try:
            shutil.copyfile(source, staging)
            return self.commit(staging, key)
        finally:
            staging.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, key: str) -> int:
        staging = self.staging_path(key)
        try:
            staging.write_bytes(data)
            return self.commit(staging, key)
        finally:
            staging.unlink(missing_ok=True)

    @abstractmethod
    def copy(self, source_key: str, key: str) -> int:
        """Publish the blob `source_key` under `key` too (inside the store); returns its size."""
        ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The blob's content; FileNotFoundError when there is none."""
        ...

    @abstractmethod
    def stream(self, key: str) -> Iterator[bytes]: ...

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when there is no such blob."""
        ...

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (a folder-like prefix: 'a/b' lists 'a/b/...'), sorted."""
        ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove the blob `prefix` and every blob under `prefix/`."""
        ...

    @abstractmethod
    def gdal_path(self, key: str) -> str:
        """What GDAL opens to read the blob (a /vsi path for remote stores)."""
        ...

    def gdal_options(self) -> dict[str, str]:
        """GDAL config options `gdal_path` needs (custom S3 endpoints)."""
        return {}

    @abstractmethod
    def local_path(self, key: str) -> Path:
        """A local file with the blob's content (the blob itself, or a cached download)."""
        ...

    @abstractmethod
    def ref(self, key: str = "") -> str:
        """The blob (or the folder `key`) as a location string another process can open."""
        ...


class LocalBlobStore(BlobStore):
    is_local = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    def local_root(self) -> Path:
        return self.root

    def path(self, key: str) -> Path:
        """Local path of a key; refuses keys that would escape the store."""
        return self.root.joinpath(*PurePosixPath(check_key(key)).parts)

    def gdal_path(self, key: str) -> str:
        return str(self.path(key))

    def staging_path(self, key: str) -> Path:
        """Beside the final path (same filesystem, so the rename is atomic)."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(_staging_name(final.name))

    def commit(self, staging: Path, key: str) -> int:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)
        return final.stat().st_size

    def copy(self, source_key: str, key: str) -> int:
        staging = self.staging_path(key)
        try:
            os.link(self.path(source_key), staging)  # blobs are immutable: share the bytes
        except OSError:
            shutil.copyfile(self.path(source_key), staging)
        return self.commit(staging, key)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def stream(self, key: str) -> Iterator[bytes]:
        with open(self.path(key), "rb") as handle:
            while chunk := handle.read(_STREAM_CHUNK):
                yield chunk

    def size(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.path(prefix) if prefix else self.root
        if base.is_file():
            return [check_key(prefix)]
        keys = [
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not _is_staging(p.name)
        ]
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        target = self.path(prefix)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no blob {key!r}")
        return path

    def ref(self, key: str = "") -> str:
        return str(self.path(key)) if key else str(self.root)


class ObjectBlobStore(BlobStore):
    """An S3-compatible or GCS bucket (with an optional prefix), through obstore."""

    is_local = False

    def __init__(
        self,
        url: str,
        *,
        cache_dir: str | Path | None = None,
        staging_dir: str | Path | None = None,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in OBJECT_SCHEMES or not parsed.netloc:
            raise ValueError(f"not an object store URL: {url!r} (use s3://bucket/prefix or gs://)")
        self.scheme = parsed.scheme
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.url = f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        # Downloads are keyed by the whole location, so stores sharing a cache never mix.
        self.cache_dir = Path(cache_dir or _default_dir("blob-cache")) / self.scheme / self.bucket
        self.staging_dir = Path(staging_dir or _default_dir("staging"))
        self._store = _make_store(self.scheme, self.bucket, self.prefix)

    def _full(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def staging_path(self, key: str) -> Path:
        check_key(key)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        return self.staging_dir / _staging_name(PurePosixPath(key).name)

    def commit(self, staging: Path, key: str) -> int:
        import obstore

        try:
            size = staging.stat().st_size
            # Files above the chunk size go up as a multipart upload: the object appears only
            # when the upload completes, like a rename.
            obstore.put(self._store, check_key(key), Path(staging))
            return size
        finally:
            staging.unlink(missing_ok=True)

    def copy(self, source_key: str, key: str) -> int:
        import obstore

        obstore.copy(self._store, check_key(source_key), check_key(key))  # server-side
        return self.size(key) or 0

    def read_bytes(self, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self._store, check_key(key)).bytes())

    def stream(self, key: str) -> Iterator[bytes]:
        import obstore

        result = obstore.get(self._store, check_key(key))
        for chunk in result.stream(min_chunk_size=_STREAM_CHUNK):
            yield bytes(chunk)

    def size(self, key: str) -> int | None:
        import obstore

        try:
            return int(obstore.head(self._store, check_key(key))["size"])
        except FileNotFoundError:
            return None

    def list(self, prefix: str = "") -> list[str]:
        import obstore

        keys = []
        for batch in obstore.list(self._store, check_key(prefix) if prefix else None):
            keys.extend(meta["path"] for meta in batch)
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> None:
        import obstore

        keys = self.list(prefix)
        if self.exists(prefix):
            keys.append(check_key(prefix))
        for start in range(0, len(keys), 500):
            obstore.delete(self._store, keys[start : start + 500])
        cached = self.cache_dir.joinpath(*PurePosixPath(self._full(prefix)).parts)
        if cached.is_dir():
            shutil.rmtree(cached, ignore_errors=True)
        else:
            cached.unlink(missing_ok=True)

    def gdal_path(self, key: str) -> str:
        return f"{_GDAL_PREFIX[self.scheme]}{self.bucket}/{self._full(key)}"

    def gdal_options(self) -> dict[str, str]:
        return gdal_options_for(self.scheme)

    def local_path(self, key: str) -> Path:
        target = self.cache_dir.joinpath(*PurePosixPath(self._full(key)).parts)
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with open(partial, "wb") as handle:
                for chunk in self.stream(key):
                    handle.write(chunk)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def ref(self, key: str = "") -> str:
        return f"{self.scheme}://{self.bucket}/{self._full(key)}" if key else self.url


def _make_store(scheme: str, bucket: str, prefix: str):
    from obstore.store import GCSStore, S3Store

    if scheme == "gs":
        return GCSStore(bucket, prefix=prefix or None)
    # Credentials, region and endpoint come from the AWS_* environment, as for every AWS tool.
    endpoint = s3_endpoint()
    options = {"allow_http": True} if endpoint and endpoint.startswith("http://") else None
    return S3Store(bucket, prefix=prefix or None, client_options=options)


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def gdal_options_for(scheme: str) -> dict[str, str]:
    """GDAL config options to read /vsis3/ (or /vsigs/) paths like obstore reaches the store.

    GDAL reads the AWS credentials and region from the environment itself, but not
    AWS_ENDPOINT_URL: a custom endpoint becomes AWS_S3_ENDPOINT (host:port), AWS_HTTPS and
    path-style addressing (what S3-compatible servers expect). GDAL_DISABLE_READDIR_ON_OPEN is
    left alone: applied process-wide it would also hide local sidecar files (.tfw) from ingest.
    """
    options: dict[str, str] = {}
    endpoint = s3_endpoint() if scheme == "s3" else None
    if endpoint:
        parsed = urlparse(endpoint)
        options["AWS_S3_ENDPOINT"] = parsed.netloc or parsed.path
        options["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return options


def gdal_options_for_path(gdal_path: str) -> dict[str, str]:
    """The options a GDAL path needs (a remote COG on S3 needs the endpoint's, whatever the
    data location is)."""
    for scheme, prefix in _GDAL_PREFIX.items():
        if gdal_path.startswith(prefix):
            return gdal_options_for(scheme)
    return {}


_applied: dict[str, str] = {}


def apply_gdal_options(options: dict[str, str]) -> None:
    """Make GDAL options effective in this whole process (every thread, e.g. a Dask worker's).

    GDAL falls back to the environment for config options it is not given. A value the
    operator set explicitly wins; one this function set earlier is updated.
    """
    for name, value in options.items():
        current = os.environ.get(name)
        if current is None or current == _applied.get(name):
            os.environ[name] = value
            _applied[name] = value


def is_object_url(location: str | Path) -> bool:
    return isinstance(location, str) and urlparse(location).scheme in OBJECT_SCHEMES


def open_blob_store(
    location: str | Path,
    *,
    cache_dir: str | Path | None = None,
    staging_dir: str | Path | None = None,
) -> BlobStore:
    """A store rooted at a directory path or at an s3:// / gs:// URL."""
    if is_object_url(location):
        return ObjectBlobStore(str(location), cache_dir=cache_dir, staging_dir=staging_dir)
    text = str(location)
    if "://" in text:
        raise ValueError(f"unsupported data location {text!r}: use a path, s3:// or gs://")
    return LocalBlobStore(text)


def fetch_local(ref: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local file for a blob ref: the path itself, or a cached download of an object URL."""
    if not is_object_url(ref):
        return Path(ref)
    parsed = urlparse(str(ref))
    store = ObjectBlobStore(f"{parsed.scheme}://{parsed.netloc}", cache_dir=cache_dir)
    return store.local_path(parsed.path.lstrip("/"))
