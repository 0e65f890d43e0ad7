"""Job records: status and progress of long work (ingest now; training and export later)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from catalog.db import Database
from catalog.errors import JobNotFoundError
from catalog.models import DEFAULT_PROJECT, JobRecord, JobStatus, utcnow
from catalog.projects import scoped, visible

TRAIN_JOB = "train"  # kinds judged here; ingest's is catalog.ingest.INGEST_JOB


def process_owner() -> str:
    """Identifies the process running a job, so orphans can be told from live work."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(owner: str) -> bool:
    """Whether the process named by `owner` (see process_owner) has certainly stopped: it ran on
    this host and its pid is dead. Work of other hosts is never judged gone from here."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return False
    return not _pid_alive(pid)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


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
        record = JobRecord(
            kind=kind,
            project_id=project,
            image_id=image_id,
            detector_id=detector_id,
            message=message,
            owner=process_owner(),
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

    def unfinished(self) -> list[JobRecord]:
        query = select(JobRecord).where(JobRecord.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
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
