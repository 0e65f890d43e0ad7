"""Ingest: validate a raster, record it, write its COG to the blob store, mark it ready.

Two phases so the API can answer at once: `submit` validates and creates the records (a bad file
stores nothing); `run` does the slow conversion, in a background thread or in the CLI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from catalog.db import OUTAGE_WAIT_S, SkipWhileUnavailable, retry_unavailable
from catalog.errors import failure_reason
from catalog.images import ImageCatalog
from catalog.jobs import TRAIN_JOB, JobStore, new_job
from catalog.models import DEFAULT_PROJECT, ImageRecord, JobRecord
from catalog.names import check_name
from catalog.owners import owner_is_gone, process_owner
from tiles.cog import write_cog
from tiles.metadata import describe_cog
from tiles.source import SourceInfo, SourceLimits, inspect_source

log = logging.getLogger(__name__)

T = TypeVar("T")

INGEST_JOB = "ingest"
# Conversion is most of the work; describing the COG and committing it take the rest.
_CONVERSION_SHARE = 0.9


@dataclass(frozen=True)
class IngestTicket:
    image: ImageRecord  # as submitted: processing, its job queued
    job: JobRecord
    source: Path
    info: SourceInfo
    remove_source: bool  # uploads are ours to delete; a CLI user's file is not

    @property
    def image_id(self) -> str:
        return self.image.id

    @property
    def job_id(self) -> str:
        return self.job.id


class Ingestor:
    def __init__(
        self,
        images: ImageCatalog,
        jobs: JobStore,
        limits: SourceLimits = SourceLimits(),
        database_wait_s: float = OUTAGE_WAIT_S,
    ) -> None:
        self.images = images
        self.jobs = jobs
        self.limits = limits
        self.database_wait_s = database_wait_s  # how long an outcome waits for the database

    def submit(
        self,
        source: str | Path,
        name: str,
        *,
        remove_source: bool = False,
        project: str = DEFAULT_PROJECT,
    ) -> IngestTicket:
        """Validate and create the records. Raises InvalidImageError (or the database's error
        when it is unavailable), storing nothing."""
        source = Path(source)
        try:
            name = check_name(name, "image name")
            info = inspect_source(source, self.limits)
            job = new_job(INGEST_JOB, message=f"queued: {name}", project=project)
            image = self.images.create_processing(name, source.stat().st_size, project, job)
        except Exception:
            if remove_source:
                source.unlink(missing_ok=True)  # refused or not recorded: nothing is kept
            raise
        return IngestTicket(image, job, source, info, remove_source)

    def run(
        self, ticket: IngestTicket, progress: Callable[[float], None] | None = None
    ) -> ImageRecord:
        """Convert and publish. On any failure the image is discarded and the job says why.
        While the database is unavailable progress goes unrecorded and the outcome waits."""
        skip = SkipWhileUnavailable(f"progress of ingest job {ticket.job_id}")
        job_progress = self.jobs.throttled_progress(ticket.job_id)

        def report(fraction: float) -> None:
            skip(job_progress, fraction)
            if progress:
                progress(fraction)

        image_id, cog_key = ticket.image_id, ticket.image.cog_key
        assert cog_key
        staging = self.images.blobs.staging_path(cog_key)
        try:
            skip(self.jobs.start, ticket.job_id, "writing Cloud-Optimized GeoTIFF")
            write_cog(
                ticket.source,
                staging,
                ticket.info,
                progress=lambda f: report(_CONVERSION_SHARE * f),
            )
            skip(self.jobs.progress, ticket.job_id, _CONVERSION_SHARE, "computing statistics")
            metadata = describe_cog(staging)
            cog_bytes = self.images.blobs.commit(staging, cog_key)
            ready = self._waiting(
                ticket, lambda: self.images.mark_ready(image_id, metadata, cog_bytes)
            )
            self._waiting(ticket, lambda: self.jobs.succeed(ticket.job_id, {"image_id": image_id}))
            report(1.0)
            return ready
        except BaseException as exc:
            staging.unlink(missing_ok=True)
            log.warning("ingest of image %s failed: %s", image_id, exc)
            self._record_failure(ticket, f"ingest failed: {failure_reason(exc, staging)}")
            raise
        finally:
            if ticket.remove_source:
                ticket.source.unlink(missing_ok=True)

    def _waiting(self, ticket: IngestTicket, write: Callable[[], T]) -> T:
        """An outcome's write, waiting for the database if it is unavailable."""
        return retry_unavailable(write, f"ingest job {ticket.job_id}", self.database_wait_s)

    def _record_failure(self, ticket: IngestTicket, error: str) -> None:
        """Discard the image and fail the job, waiting for the database if it is unavailable:
        the job must not stay running (if the database never returns, a restart fails it)."""
        try:
            self._waiting(ticket, lambda: self.images.discard(ticket.image_id))
            self._waiting(ticket, lambda: self.jobs.fail(ticket.job_id, error))
        except Exception:
            log.exception("the failure of ingest job %s could not be recorded", ticket.job_id)


INTERRUPTED = {
    None: "interrupted: the process running this job stopped before it finished",
    INGEST_JOB: "interrupted: the process converting this image stopped before the COG was "
    "complete; the partial image was discarded, upload it again",
    TRAIN_JOB: "interrupted: the process running this training stopped before it finished; "
    "no version was published, start the training again",
}


def recover_interrupted(images: ImageCatalog, jobs: JobStore) -> list[str]:
    """At startup: fail jobs whose process is gone, and discard their half-ingested images.

    A job owned by a live process on this host (a `tiledetect ingest` running beside the server,
    another worker of the same server) is left alone; so are jobs of other hosts, which only their
    own host can judge. Each orphan is claimed atomically, so when several server processes start
    at once exactly one of them fails it and removes its image.
    """
    me = process_owner()  # an earlier app in this very process (tests) left these behind
    recovered = []
    for job in jobs.unfinished():
        if job.owner != me and not owner_is_gone(job.owner):
            continue
        if not jobs.fail_orphan(job.id, job.owner, INTERRUPTED.get(job.kind, INTERRUPTED[None])):
            continue  # another process recovered it first
        if job.kind == INGEST_JOB and job.image_id:
            images.discard(job.image_id)
        recovered.append(job.id)
    return recovered
