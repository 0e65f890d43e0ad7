"""HTTP responses that send a blob: the file itself from a local store (ranges, sendfile),
streamed chunk by chunk from an object store (never held whole in memory)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi.responses import FileResponse, StreamingResponse

from catalog.blobstore import BlobStore


def blob_response(blobs: BlobStore, key: str, media_type: str, filename: str | None = None):
    """The blob as a download; the caller has checked that it exists."""
    if blobs.is_local:
        return FileResponse(blobs.local_path(key), media_type=media_type, filename=filename)
    headers = {}
    size = blobs.size(key)
    if size is not None:
        headers["Content-Length"] = str(size)
    if filename:
        headers["Content-Disposition"] = f"attachment; filename*=utf-8''{quote(filename)}"
    return StreamingResponse(blobs.stream(key), media_type=media_type, headers=headers)
