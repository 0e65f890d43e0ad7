"""Export records: what was asked, where the sweep stands, and the finished result's blob."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from catalog.db import Database
from catalog.errors import ExportNotFoundError
from catalog.jobs import process_owner
from catalog.models import ExportRecord, ExportState, utcnow
from catalog.projects import scoped, visible


def export_prefix(export_id: str) -> str:
    """Blob-store prefix holding an export's cell results and output."""
    return f"exports/{export_id}"


class ExportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, **fields: Any) -> ExportRecord:
        record = ExportRecord(owner=process_owner(), **fields)
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

    def claim(self, export_id: str, previous_owner: str, owner: str) -> bool:
        """Take over an export from `previous_owner`; False when another process was first."""
        query = (
            update(ExportRecord)
            .where(ExportRecord.id == export_id, ExportRecord.owner == previous_owner)
            .values(owner=owner, updated_at=utcnow())
        )
        with self.db.transaction() as session:
            return session.execute(query).rowcount == 1

    def update(self, export_id: str, **fields: Any) -> None:
        with self.db.transaction() as session:
            record = session.get(ExportRecord, export_id)
            if record is None:
                raise ExportNotFoundError(f"no export with id {export_id!r}")
            for name, value in fields.items():
                setattr(record, name, value)
            record.updated_at = utcnow()

    def finish(self, export_id: str, state: str, **fields: Any) -> None:
        self.update(export_id, state=state, finished_at=utcnow(), **fields)
