"""Detectors: a name and numbered versions, each an ONNX file in the blob store."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from catalog.blobstore import BlobStore
from catalog.db import Database
from catalog.errors import DetectorNotFoundError
from catalog.models import DEFAULT_PROJECT, DetectorRecord, DetectorVersionRecord, new_id
from catalog.names import check_name
from catalog.projects import scoped, visible
from inference.format import DetectorSpec

ORPHAN_GRACE_S = 600.0


class DetectorCatalog:
    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    def create(
        self,
        name: str,
        classes: list[str],
        colors: list[str] | None = None,
        project: str = DEFAULT_PROJECT,
    ) -> DetectorRecord:
        name = check_name(name, "detector name")
        record = DetectorRecord(
            id=new_id(), name=name, classes=classes, colors=colors, project_id=project
        )
        with self.db.transaction() as session:
            session.add(record)
        return record

    def add_version(
        self,
        detector_id: str,
        onnx_file: Path,
        spec: DetectorSpec,
        *,
        metrics: dict | None = None,
        source: str = "import",
        attachments: dict[str, Path] | None = None,
        annotation_revision: int | None = None,
    ) -> DetectorVersionRecord:
        """Copy a validated ONNX file (and files that go with it, such as a training report)
        into the store, then record it as the next version: files first, so a recorded version
        always has them."""
        self.get(detector_id)
        version_id = new_id()
        key = f"detectors/{detector_id}/{version_id}.onnx"
        copied = [key]
        try:
            size = self._copy_in(onnx_file, key)
            for name, path in (attachments or {}).items():
                copied.append(self.attachment_key(detector_id, version_id, name))
                self._copy_in(path, copied[-1])
            for attempt in range(5):
                try:
                    return self._record_version(
                        version_id, detector_id, key, size, spec, metrics, source,
                        annotation_revision,
                    )  # fmt: skip
                except IntegrityError:  # another version took the number; take the next
                    if attempt == 4:
                        raise
        except BaseException:
            for stored in copied:
                self.blobs.delete_prefix(stored)
            raise
        raise AssertionError("unreachable")

    def _copy_in(self, path: Path, key: str) -> int:
        return self.blobs.put_file(path, key)

    def _record_version(
        self, version_id, detector_id, key, size, spec, metrics, source, annotation_revision
    ):
        with self.db.transaction() as session:
            number = session.scalar(
                select(func.coalesce(func.max(DetectorVersionRecord.number), 0)).where(
                    DetectorVersionRecord.detector_id == detector_id
                )
            )
            record = DetectorVersionRecord(
                id=version_id,
                detector_id=detector_id,
                number=number + 1,
                onnx_key=key,
                onnx_bytes=size,
                spec=spec.as_dict(),
                metrics=metrics,
                source=source,
                annotation_revision=annotation_revision,
            )
            session.add(record)
        return record

    @staticmethod
    def attachment_key(detector_id: str, version_id: str, name: str) -> str:
        return f"detectors/{detector_id}/{version_id}/{name}"

    def remove_orphans(self, grace_s: float = ORPHAN_GRACE_S) -> list[str]:
        """Delete files under detectors/ that no version records: what a process killed between
        copying a version's files and recording it left. Younger files are spared: another live
        process may be about to record them (add_version copies first)."""
        if not self.blobs.is_local:
            # An object store's puts are atomic and staged locally; its orphans (a kill between
            # put and record) are not swept yet.
            return []
        root = self.blobs.path("detectors")
        if not root.is_dir():
            return []
        with self.db.transaction() as session:
            known = set(session.scalars(select(DetectorVersionRecord.id)))
            detectors = set(session.scalars(select(DetectorRecord.id)))
        removed = []
        cutoff = time.time() - grace_s
        for folder in root.iterdir():
            for path in folder.iterdir() if folder.is_dir() else [folder]:
                # {version}.onnx and {version}/ attachments; staging files start with a dot.
                version_id = path.name.split(".")[0]
                if folder.name in detectors and version_id in known:
                    continue
                if path.lstat().st_mtime > cutoff:
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(str(path.relative_to(root)))
            if folder.is_dir() and folder.name not in detectors and not any(folder.iterdir()):
                folder.rmdir()
        return removed

    def get(self, detector_id: str, project: str | None = None) -> DetectorRecord:
        """A detector; its versions and annotations are its project's too."""
        with self.db.transaction() as session:
            record = session.get(DetectorRecord, detector_id)
        if record is None or not visible(record.project_id, project):
            raise DetectorNotFoundError(f"no detector with id {detector_id!r}")
        return record

    def list(self, project: str | None = None) -> list[DetectorRecord]:
        query = scoped(select(DetectorRecord), DetectorRecord.project_id, project)
        with self.db.transaction() as session:
            return list(session.scalars(query.order_by(DetectorRecord.created_at)))

    def versions(self, detector_id: str) -> list[DetectorVersionRecord]:
        query = (
            select(DetectorVersionRecord)
            .where(DetectorVersionRecord.detector_id == detector_id)
            .order_by(DetectorVersionRecord.number)
        )
        with self.db.transaction() as session:
            return list(session.scalars(query))

    def version(
        self, detector_id: str, number: int | None = None, project: str | None = None
    ) -> DetectorVersionRecord:
        """A given version number, or the latest."""
        if project is not None:
            self.get(detector_id, project)
        versions = self.versions(detector_id)
        if not versions:
            self.get(detector_id)
            raise DetectorNotFoundError(f"detector {detector_id} has no trained version yet")
        if number is None:
            return versions[-1]
        for version in versions:
            if version.number == number:
                return version
        raise DetectorNotFoundError(f"detector {detector_id} has no version {number}")

    def onnx_path(self, version: DetectorVersionRecord) -> Path:
        """A local file of the version's model (a cached download from a remote store)."""
        return self.blobs.local_path(version.onnx_key)

    def onnx_ref(self, version: DetectorVersionRecord) -> str:
        """The model as a location a Dask worker elsewhere can fetch (blobstore.fetch_local)."""
        return self.blobs.ref(version.onnx_key)

    def delete(self, detector_id: str, project: str | None = None) -> list[str]:
        """Remove a detector, its versions and files; returns the removed version ids."""
        self.get(detector_id, project)
        versions = [v.id for v in self.versions(detector_id)]
        with self.db.transaction() as session:
            record = session.get(DetectorRecord, detector_id)
            if record is None:
                raise DetectorNotFoundError(f"no detector with id {detector_id!r}")
            session.execute(
                DetectorVersionRecord.__table__.delete().where(
                    DetectorVersionRecord.detector_id == detector_id
                )
            )
            session.delete(record)
        self.blobs.delete_prefix(f"detectors/{detector_id}")
        return versions
