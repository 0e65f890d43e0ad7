"""Streams a multipart upload straight to disk, enforcing the size limit while it arrives."""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from python_multipart.multipart import FormParser, parse_options_header
from starlette import status
from starlette.requests import Request

from catalog.owners import owner_is_gone, process_owner
from server.errors import UploadError

# Names end up in the catalogue and in downloads: keep them to one plain path component.
_SAFE_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,255}$")


MULTIPART_SLACK = 64 * 1024  # a form's own bytes (boundaries, headers) beside the file's


@dataclass
class Upload:
    filename: str
    path: Path
    size: int


async def receive_file(
    request: Request,
    upload_dir: Path,
    field: str,
    max_bytes: int,
    limit_name: str = "TILEDETECT_MAX_UPLOAD_BYTES",
) -> Upload:
    """Write the multipart field `field` to a new file in `upload_dir` and return it; a body
    over `max_bytes` is refused (413) naming `limit_name`, as soon as it is known."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise UploadError(
            f"send the image as multipart/form-data in the field '{field}'",
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_SLACK:
        raise UploadError(_too_large(max_bytes, limit_name), status.HTTP_413_CONTENT_TOO_LARGE)

    # A private directory per request: an aborted body leaves parts the parser never handed over.
    incoming = upload_dir / f".incoming-{_owner_tag()}-{uuid.uuid4().hex}"
    incoming.mkdir(parents=True)
    try:
        part = await _parse_single_file(request, incoming, field, max_bytes, limit_name)
        filename = _clean_filename(part.file_name)
        if part.size > max_bytes:
            raise UploadError(_too_large(max_bytes, limit_name), status.HTTP_413_CONTENT_TOO_LARGE)
        if part.size == 0:
            raise UploadError("the uploaded file is empty")
        final = upload_dir / f"{_owner_tag()}-{uuid.uuid4().hex}.upload"
        Path(part.actual_file_name.decode()).rename(final)
        return Upload(filename=filename, path=final, size=part.size)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


async def _parse_single_file(
    request: Request, incoming: Path, field: str, max_bytes: int, limit_name: str
):
    files: list = []
    _, options = parse_options_header(request.headers.get("content-type", ""))
    parser = FormParser(
        "multipart/form-data",
        on_field=lambda _field: None,
        on_file=files.append,
        boundary=options[b"boundary"],
        config={
            "UPLOAD_DIR": str(incoming),
            "UPLOAD_DELETE_TMP": False,
            "MAX_MEMORY_FILE_SIZE": 0,  # always on disk: uploads are routinely gigabytes
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + MULTIPART_SLACK:
                raise UploadError(
                    _too_large(max_bytes, limit_name), status.HTTP_413_CONTENT_TOO_LARGE
                )
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # the multipart parser's own errors, or a dropped connection
        raise UploadError(f"malformed multipart body: {exc}") from exc
    finally:
        for f in files:
            f.file_object.close()
    wanted = [f for f in files if f.field_name == field.encode()]
    if not wanted:
        raise UploadError(f"no file in the form field '{field}'")
    if len(wanted) > 1:
        raise UploadError(f"send one file per request in the field '{field}'")
    return wanted[0]


def _owner_tag() -> str:
    """Names this process in upload file names, so a restart can tell its dead ones' leftovers."""
    return process_owner().replace(":", "@")


def remove_orphan_uploads(upload_dir: Path) -> list[str]:
    """At startup: delete uploads (received or half-received) of processes that have stopped.

    An upload is ingested, then deleted, by the process that received it; one killed on the way
    leaves its file here. Files of live processes (other workers of this server) are kept.
    """
    removed = []
    if not upload_dir.is_dir():
        return removed
    for path in upload_dir.iterdir():
        match = _UPLOAD_NAME.fullmatch(path.name)
        if match is None or not owner_is_gone(match["owner"].replace("@", ":")):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


_UPLOAD_NAME = re.compile(r"(?:\.incoming-)?(?P<owner>.+@\d+)-[0-9a-f]{32}(?:\.upload)?")


def _clean_filename(raw: bytes | None) -> str:
    name = (raw or b"").decode("utf-8", errors="replace").strip()
    if not name:
        raise UploadError("the uploaded file has no filename")
    if "/" in name or "\\" in name or name in (".", "..") or not _SAFE_NAME.match(name):
        raise UploadError(
            f"the filename {name!r} has path components or control characters; send a plain name"
        )
    return name


def _too_large(max_bytes: int, limit_name: str) -> str:
    return f"the upload is larger than the limit of {max_bytes} bytes ({limit_name})"
