"""Export records: what was asked, where the sweep stands, and the finished result's blob."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from catalog.db import Database
from catalog.errors import ExportNotFoundError
from catalog.models import ExportRecord, ExportState, utcnow
from catalog.owners import owner_alive, process_owner
from catalog.projects import scoped, visible

# States a finished export can be resumed from (`done` is final).
RESUMABLE = (ExportState.PARTIAL, ExportState.FAILED, ExportState.CANCELLED)


def export_prefix(export_id: str) -> str:
    """Blob-store prefix holding an export's cell results and output."""
    return f"exports/{export_id}"


class ExportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, **fields: Any) -> ExportRecord:
        record = ExportRecord(owner=process_owner(), lease_renewed_at=utcnow(), **fields)
        with self.db.transaction() as session:
            session.add(record)
        return record

    def get(self, export_id: str, project: str | None = None) -> ExportRecord:
        with self.db.transaction() as session:
            record = session.get(ExportRecord, export_id)
        if record is None or not visible(record.project_id, project):
            raise ExportNotFoundError(f"no export with id {export_id!r}")
        return record

    def list(self, limit: int = 100, project: str | None = None) -> list[ExportRecord]:
        query = scoped(select(ExportRecord), ExportRecord.project_id, project)
        query = query.order_by(ExportRecord.created_at.desc()).limit(limit)
        with self.db.transaction() as session:
            return list(session.scalars(query))

    def unfinished(self) -> list[ExportRecord]:
        query = select(ExportRecord).where(ExportRecord.state.in_(ExportState.UNFINISHED))
        with self.db.transaction() as session:
            return list(session.scalars(query))

    def latest_done(self, version_id: str, image_id: str) -> ExportRecord | None:
        """The newest finished whole-image export of this version over this image."""
        query = (
            select(ExportRecord)
            .where(
                ExportRecord.version_id == version_id,
                ExportRecord.image_id == image_id,
                ExportRecord.state == ExportState.DONE,
            )
            .order_by(ExportRecord.finished_at.desc())
        )
        with self.db.transaction() as session:
            return session.scalars(query).first()

    def update(self, export_id: str, **fields: Any) -> None:
        with self.db.transaction() as session:
            record = session.get(ExportRecord, export_id)
            if record is None:
                raise ExportNotFoundError(f"no export with id {export_id!r}")
            for name, value in fields.items():
                setattr(record, name, value)
            record.updated_at = utcnow()

    def finish(self, export_id: str, state: str, **fields: Any) -> bool:
        """Record the end of an unfinished export this process owns; False (and nothing
        written) when it has ended already or another process has taken it over."""
        return self._set(
            export_id,
            (ExportRecord.owner == process_owner(), ExportRecord.state.in_(ExportState.UNFINISHED)),
            state=state,
            finished_at=utcnow(),
            **fields,
        )

    # Ownership: one process drives an export's sweep, whichever server process asked for it.

    def orphaned(self, record: ExportRecord, lease_s: float) -> bool:
        """Unfinished, and its owner is dead (this host) or has not renewed its lease in time."""
        if record.state not in ExportState.UNFINISHED or record.owner == process_owner():
            return False
        alive = owner_alive(record.owner)
        if alive is not None:
            return not alive
        renewed = record.lease_renewed_at
        if renewed is None:
            return True
        if renewed.tzinfo is None:  # SQLite returns naive datetimes
            renewed = renewed.replace(tzinfo=UTC)
        return datetime.now(UTC) - renewed > timedelta(seconds=lease_s)

    def claim(self, record: ExportRecord) -> bool:
        """Take over an orphaned export. Atomic: it succeeds only while the owner is still the
        one `record` shows, so of several processes adopting it at once exactly one wins."""
        return self._set(
            record.id,
            (ExportRecord.owner == record.owner, ExportRecord.state.in_(ExportState.UNFINISHED)),
            owner=process_owner(),
            lease_renewed_at=utcnow(),
        )

    def reopen(self, export_id: str) -> bool:
        """Queue a finished, not-done export again, owned by this process; atomic too."""
        return self._set(
            export_id,
            (ExportRecord.state.in_(RESUMABLE),),
            state=ExportState.QUEUED,
            owner=process_owner(),
            lease_renewed_at=utcnow(),
            cancel_requested=None,
            error=None,
            finished_at=None,
        )

    def renew_leases(self) -> int:
        """This process is alive: renew the lease of every unfinished export it owns."""
        claim = (
            update(ExportRecord)
            .where(
                ExportRecord.owner == process_owner(),
                ExportRecord.state.in_(ExportState.UNFINISHED),
            )
            .values(lease_renewed_at=utcnow())
        )
        with self.db.transaction() as session:
            return session.execute(claim).rowcount

    def request_cancel(self, export_id: str) -> bool:
        return self._set(
            export_id, (ExportRecord.state.in_(ExportState.UNFINISHED),), cancel_requested=True
        )

    def _set(self, export_id: str, conditions: tuple, **values: Any) -> bool:
        statement = (
            update(ExportRecord)
            .where(ExportRecord.id == export_id, *conditions)
            .values(updated_at=utcnow(), **values)
        )
        with self.db.transaction() as session:
            return session.execute(statement).rowcount == 1
