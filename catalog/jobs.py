"""Job records: status and progress of long work (ingest now; training and export later)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update

from catalog.db import Database
from catalog.errors import JobNotFoundError
from catalog.models import DEFAULT_PROJECT, JobRecord, JobStatus, utcnow
from catalog.owners import process_owner  # identifies a job's process: orphans vs live work
from catalog.projects import scoped, visible

TRAIN_JOB = "train"  # kinds judged here; ingest's is catalog.ingest.INGEST_JOB

UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


def new_job(
    kind: str,
    *,
    image_id: str | None = None,
    detector_id: str | None = None,
    message: str = "",
    project: str = DEFAULT_PROJECT,
) -> JobRecord:
    """A job record, not stored yet: JobStore.create stores one alone, an ingest with its image."""
    return JobRecord(
        kind=kind,
        project_id=project,
        image_id=image_id,
        detector_id=detector_id,
        message=message,
        owner=process_owner(),
    )


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        kind: str,
        *,
        image_id: str | None = None,
        detector_id: str | None = None,
        message: str = "",
        project: str = DEFAULT_PROJECT,
    ) -> JobRecord:
        record = new_job(
            kind, image_id=image_id, detector_id=detector_id, message=message, project=project
        )
        with self.db.transaction() as session:
            session.add(record)
        return record

    def get(self, job_id: str, project: str | None = None) -> JobRecord:
        with self.db.transaction() as session:
            record = session.get(JobRecord, job_id)
        if record is None or not visible(record.project_id, project):
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return record

    def list(self, limit: int = 100, project: str | None = None) -> list[JobRecord]:
        query = scoped(select(JobRecord), JobRecord.project_id, project)
        query = query.order_by(JobRecord.created_at.desc()).limit(limit)
        with self.db.transaction() as session:
            return list(session.scalars(query))

    def start(self, job_id: str, message: str = "running") -> None:
        self._update(job_id, status=JobStatus.RUNNING, message=message, owner=process_owner())

    def progress(self, job_id: str, fraction: float, message: str | None = None) -> None:
        fields: dict[str, Any] = {"progress": max(0.0, min(1.0, fraction))}
        if message is not None:
            fields["message"] = message
        self._update(job_id, **fields)

    def report(self, job_id: str, fraction: float, message: str, details: dict[str, Any]) -> None:
        """Live progress of a running job: fraction, a readable line, and structured details."""
        self._update(job_id, progress=max(0.0, min(1.0, fraction)), message=message, result=details)

    def succeed(self, job_id: str, result: dict[str, Any], message: str = "done") -> None:
        self._update(
            job_id,
            status=JobStatus.SUCCEEDED,
            progress=1.0,
            result=result,
            message=message,
            finished_at=utcnow(),
        )

    def fail(self, job_id: str, error: str) -> None:
        self._update(
            job_id, status=JobStatus.FAILED, error=error, message="failed", finished_at=utcnow()
        )

    def fail_orphan(self, job_id: str, owner: str, error: str) -> bool:
        """Fail an unfinished job still owned by `owner` (a process found dead). Atomic: of
        several processes recovering at once (server workers, replicas) exactly one wins."""
        claim = (
            update(JobRecord)
            .where(
                JobRecord.id == job_id,
                JobRecord.owner == owner,
                JobRecord.status.in_(UNFINISHED),
            )
            .values(
                status=JobStatus.FAILED,
                error=error,
                message="failed",
                finished_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        with self.db.transaction() as session:
            return session.execute(claim).rowcount == 1

    def unfinished(self) -> list[JobRecord]:
        query = select(JobRecord).where(JobRecord.status.in_(UNFINISHED))
        with self.db.transaction() as session:
            return list(session.scalars(query))

    def throttled_progress(
        self, job_id: str, min_step: float = 0.01, min_seconds: float = 0.5
    ) -> Callable[[float], None]:
        """A progress callback that writes to the database only when the change is worth it."""
        last = {"fraction": -1.0, "time": 0.0}

        def report(fraction: float) -> None:
            now = time.monotonic()
            if fraction - last["fraction"] >= min_step or now - last["time"] >= min_seconds:
                last.update(fraction=fraction, time=now)
                self.progress(job_id, fraction)

        return report

    def _update(self, job_id: str, **fields: Any) -> None:
        with self.db.transaction() as session:
            record = session.get(JobRecord, job_id)
            if record is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            for key, value in fields.items():
                setattr(record, key, value)
            record.updated_at = utcnow()
