"""Per-project limits, for a server several teams share, and what each project uses.

What is limited: trainings and exports running at once, bytes stored (COGs, detector models,
export results), the largest upload, and requests per minute per API key. The server's settings
give every project the same limits (none with auth off, a single user's server; sensible ones
with auth on, server.settings); `tiledetect projects limits NAME` overrides them for one
project, kept in `ProjectRecord.limits`. A limit of None is no limit.

Admission is checked before anything is recorded (`Quotas.admit`): over a limit, the request is
refused with the limit and the current use in words, and nothing is left half-done.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from cachetools import TTLCache
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from catalog.db import Database, is_unavailable
from catalog.jobs import TRAIN_JOB
from catalog.models import (
    DEFAULT_PROJECT,
    DetectorRecord,
    DetectorVersionRecord,
    ExportRecord,
    ExportState,
    ImageRecord,
    ImageStatus,
    JobRecord,
    JobStatus,
    ProjectRecord,
)
from catalog.projects import scoped
from tiles.errors import TileDetectError


@dataclass(frozen=True)
class ProjectLimits:
    trainings: int | None = None  # trainings queued or running at once
    exports: int | None = None  # exports queued or running at once
    storage_bytes: int | None = None  # COGs + detector models + export results
    upload_bytes: int | None = None  # one image upload
    requests_per_minute: int | None = None  # per API key, bursts of a quarter of it

    def with_overrides(self, overrides: dict[str, Any] | None) -> ProjectLimits:
        """These limits with a project's own: a key present overrides (None: no limit)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in (overrides or {}).items() if k in known})

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


LIMIT_NAMES = {
    "trainings": "trainings at once",
    "exports": "exports at once",
    "storage_bytes": "storage",
    "upload_bytes": "upload size",
    "requests_per_minute": "requests per minute per key",
}
# The `tiledetect projects limits` option that changes each limit.
LIMIT_OPTIONS = {
    "trainings": "--trainings",
    "exports": "--exports",
    "storage_bytes": "--storage",
    "upload_bytes": "--upload",
    "requests_per_minute": "--rate",
}


@dataclass(frozen=True)
class ProjectUsage:
    images: int
    image_bytes: int  # ready COGs, and the uploads of images still being ingested
    model_bytes: int  # every detector version's ONNX file
    export_bytes: int  # finished export results
    trainings_running: int  # queued or running
    exports_running: int  # queued or running
    exports_finished: int
    objects_exported: int  # over every finished export

    @property
    def storage_bytes(self) -> int:
        return self.image_bytes + self.model_bytes + self.export_bytes

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "storage_bytes": self.storage_bytes}


class LimitExceededError(TileDetectError):
    """A request over one of its project's limits (403; 413 for uploads, 429 for rate)."""

    def __init__(self, message: str, limit: str, allowed: int, used: int) -> None:
        super().__init__(message)
        self.limit, self.allowed, self.used = limit, allowed, used

    def as_dict(self) -> dict[str, Any]:
        return {
            "detail": str(self),
            "limit": self.limit,
            "allowed": self.allowed,
            "used": self.used,
        }


class UploadTooLargeError(LimitExceededError):
    pass


class RateLimitedError(LimitExceededError):
    def __init__(self, message: str, allowed: int, retry_after_s: float) -> None:
        super().__init__(message, "requests_per_minute", allowed, allowed)
        self.retry_after_s = retry_after_s


def size_in_words(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Quotas:
    """Limits and usage of projects; `admit` guards the creation of work against them."""

    def __init__(self, db: Database, defaults: ProjectLimits, cache_seconds: float = 5.0) -> None:
        self.db = db
        self.defaults = defaults
        self._cached: TTLCache[str, ProjectLimits] = TTLCache(
            maxsize=4096, ttl=max(cache_seconds, 1e-3)
        )
        self._last_known: dict[str, ProjectLimits] = {}
        self._cache_lock = threading.Lock()
        # One admission at a time in this process: two requests cannot both take the last slot.
        self._admitting = threading.Lock()

    # Limits ------------------------------------------------------------------------------------

    def limits(self, project: str) -> ProjectLimits:
        with self.db.transaction() as session:
            record = session.get(ProjectRecord, project)
            overrides = record.limits if record is not None else None
        limits = self.defaults.with_overrides(overrides)
        with self._cache_lock:
            self._cached[project] = self._last_known[project] = limits
        return limits

    def cached_limits(self, project: str) -> ProjectLimits | None:
        """What `limits` said within the cache time, without a query (None if nothing)."""
        with self._cache_lock:
            return self._cached.get(project)

    def request_limits(self, project: str) -> ProjectLimits:
        """Limits for checks made on every request (the rate): what `limits` said within the
        cache time, so tiles do not query the database each; while the database is unavailable,
        the last known ones (or the settings'), so tiles that can be served still are."""
        limits = self.cached_limits(project)
        if limits is not None:
            return limits
        try:
            return self.limits(project)
        except DBAPIError as exc:
            if not is_unavailable(exc):
                raise
            with self._cache_lock:
                return self._last_known.get(project, self.defaults)

    def set_limits(self, project: str, changes: dict[str, int | None], reset: bool = False):
        """Override limits of one project (None: no limit); `reset` drops its overrides first,
        so it follows the server's settings again. Returns the project's limits now."""
        unknown = set(changes) - set(LIMIT_NAMES)
        if unknown:
            raise ValueError(f"unknown limits: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            if value is not None and value < 0:
                raise ValueError(f"{LIMIT_NAMES[name]} cannot be negative")
        with self.db.transaction() as session:
            record = session.get(ProjectRecord, project)
            if record is None:
                raise LookupError(f"no project {project!r}")
            record.limits = {**({} if reset else (record.limits or {})), **changes}
        return self.limits(project)

    def overrides(self, project: str) -> dict[str, Any]:
        with self.db.transaction() as session:
            record = session.get(ProjectRecord, project)
            return dict(record.limits or {}) if record is not None else {}

    # Usage -------------------------------------------------------------------------------------

    def usage(self, project: str) -> ProjectUsage:
        with self.db.transaction() as session:

            def total(query, column) -> int:
                return int(session.scalar(scoped(query, column, project)) or 0)

            ingested = ImageRecord.remote_url.is_(None)  # remote COGs are read where they are
            ready = total(
                select(func.sum(ImageRecord.cog_bytes)).where(
                    ingested, ImageRecord.status == ImageStatus.READY
                ),
                ImageRecord.project_id,
            )
            arriving = total(
                select(func.sum(ImageRecord.source_bytes)).where(
                    ingested, ImageRecord.status != ImageStatus.READY
                ),
                ImageRecord.project_id,
            )
            finished_exports = ExportRecord.state.notin_(ExportState.UNFINISHED)
            return ProjectUsage(
                images=total(select(func.count(ImageRecord.id)), ImageRecord.project_id),
                image_bytes=ready + arriving,
                model_bytes=total(
                    select(func.sum(DetectorVersionRecord.onnx_bytes)).join(
                        DetectorRecord, DetectorRecord.id == DetectorVersionRecord.detector_id
                    ),
                    DetectorRecord.project_id,
                ),
                export_bytes=total(
                    select(func.sum(ExportRecord.result_bytes)), ExportRecord.project_id
                ),
                trainings_running=total(
                    select(func.count(JobRecord.id)).where(
                        JobRecord.kind == TRAIN_JOB,
                        JobRecord.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
                    ),
                    JobRecord.project_id,
                ),
                exports_running=total(
                    select(func.count(ExportRecord.id)).where(
                        ExportRecord.state.in_(ExportState.UNFINISHED)
                    ),
                    ExportRecord.project_id,
                ),
                exports_finished=total(
                    select(func.count(ExportRecord.id)).where(finished_exports),
                    ExportRecord.project_id,
                ),
                objects_exported=total(
                    select(func.sum(ExportRecord.objects)).where(finished_exports),
                    ExportRecord.project_id,
                ),
            )

    # Admission ---------------------------------------------------------------------------------

    @contextmanager
    def admit(self, project: str | None, work: str, incoming_bytes: int = 0) -> Iterator[None]:
        """Hold while recording new work of `project` ("training", "export" or "upload" of
        `incoming_bytes`): raises LimitExceededError if it would go over a limit, and keeps
        other admissions of this process waiting until the caller has recorded its work."""
        project = project or DEFAULT_PROJECT
        with self._admitting:
            limits = self.limits(project)
            usage = self.usage(project)
            self._check(project, limits, usage, work, incoming_bytes)
            yield

    def check_upload_size(self, project: str | None, size: int, slack: int = 0) -> None:
        """An upload of `size` bytes (received, or a request body declaring up to `slack` bytes
        of its own besides the file) against the upload and storage limits; the storage check
        is repeated by `admit` when the image is recorded."""
        project = project or DEFAULT_PROJECT
        limits = self.limits(project)
        file_bytes = max(size - slack, 1)
        if limits.upload_bytes is not None and file_bytes > limits.upload_bytes:
            raise UploadTooLargeError(
                f"the upload ({size_in_words(size)}) is larger than the upload size limit of "
                f"project {self._name(project)!r}, {size_in_words(limits.upload_bytes)}",
                "upload_bytes",
                limits.upload_bytes,
                size,
            )
        if limits.storage_bytes is not None:
            self._check(project, limits, self.usage(project), "upload", file_bytes)

    def _check(
        self,
        project: str,
        limits: ProjectLimits,
        usage: ProjectUsage,
        work: str,
        incoming_bytes: int,
    ) -> None:
        running = {
            "training": ("trainings", usage.trainings_running),
            "export": ("exports", usage.exports_running),
        }.get(work)
        if running is not None:
            name, used = running
            allowed = getattr(limits, name)
            if allowed is not None and used >= allowed:
                raise LimitExceededError(
                    f"project {self._name(project)!r} has {used} {name} queued or running, its "
                    f"limit of {LIMIT_NAMES[name]} is {allowed}: wait for one to finish "
                    f"(an administrator can change it: tiledetect projects limits "
                    f"{self._name(project)} {LIMIT_OPTIONS[name]} N)",
                    name,
                    allowed,
                    used,
                )
        allowed = limits.storage_bytes
        # New work needs room: an upload its size, a training or an export at least a byte.
        if allowed is not None and usage.storage_bytes + max(incoming_bytes, 1) > allowed:
            what = (
                f" and this upload needs {size_in_words(incoming_bytes)}" if incoming_bytes else ""
            )
            raise LimitExceededError(
                f"project {self._name(project)!r} stores {size_in_words(usage.storage_bytes)} "
                f"(images, models and exports){what}, its storage limit is "
                f"{size_in_words(allowed)}: delete images or exports it no longer needs "
                f"(an administrator can change it: tiledetect projects limits "
                f"{self._name(project)} --storage SIZE)",
                "storage_bytes",
                allowed,
                usage.storage_bytes,
            )

    def _name(self, project: str) -> str:
        with self.db.transaction() as session:
            record = session.get(ProjectRecord, project)
        return record.name if record is not None else project
