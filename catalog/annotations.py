"""Stored annotations of a detector: the validated FeatureCollection, replaced as a whole."""

from __future__ import annotations

from catalog.db import Database
from catalog.models import AnnotationSetRecord, utcnow


class AnnotationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, detector_id: str) -> AnnotationSetRecord | None:
        with self.db.transaction() as session:
            return session.get(AnnotationSetRecord, detector_id)

    def put(self, detector_id: str, collection: dict, counts: dict) -> AnnotationSetRecord:
        with self.db.transaction() as session:
            record = session.get(AnnotationSetRecord, detector_id)
            if record is None:
                record = AnnotationSetRecord(
                    detector_id=detector_id, collection=collection, revision=1, counts=counts
                )
                session.add(record)
            else:
                record.collection = collection
                record.counts = counts
                record.revision += 1
                record.updated_at = utcnow()
        return record
