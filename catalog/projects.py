"""Projects (workspaces) and their API keys, and the rule that scopes every record to one.

A record's project is its `project_id`, or the default project when that is empty (rows written
before projects existed). Catalogue methods take `project`: None means unscoped (the server's own
background work, the CLI without --project); a project id means a record of another project is
reported as not found, exactly as if it did not exist.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from catalog.db import Database
from catalog.errors import AuthenticationError, ConflictError, NotFoundError
from catalog.models import DEFAULT_PROJECT, ApiKeyRecord, ProjectRecord, new_id, utcnow
from tiles.errors import TileDetectError

TOKEN_PREFIX = "tdk_"
_PREFIX_CHARS = len(TOKEN_PREFIX) + 8  # shown in lists so a user can tell keys apart
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ProjectNotFoundError(NotFoundError):
    pass


class ApiKeyNotFoundError(NotFoundError):
    pass


class InvalidProjectNameError(TileDetectError):
    pass


def owner(project_id: str | None) -> str:
    return project_id or DEFAULT_PROJECT


def visible(project_id: str | None, project: str | None) -> bool:
    """Whether a record of `project_id` may be seen by a caller scoped to `project`."""
    return project is None or owner(project_id) == project


def scoped(query, column, project: str | None):
    """`query` limited to the records `project` sees."""
    if project is None:
        return query
    if project == DEFAULT_PROJECT:
        return query.where(or_(column == DEFAULT_PROJECT, column.is_(None)))
    return query.where(column == project)


def hash_token(token: str) -> str:
    # SHA-256 without salt or stretching is right for these tokens and wrong for passwords: a
    # token carries 256 random bits (secrets.token_urlsafe(32)), so neither guessing nor
    # precomputed tables can reach it, and a slow KDF (bcrypt, argon2) would add milliseconds to
    # every tile request for no gain. Unsalted, the hash is also the lookup key (unique index).
    return hashlib.sha256(token.encode()).hexdigest()


class ProjectStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def ensure_default(self) -> None:
        """The default project exists in every catalogue (it owns the rows without a project)."""
        with self.db.transaction() as session:
            if session.get(ProjectRecord, DEFAULT_PROJECT) is not None:
                return
        try:
            with self.db.transaction() as session:
                session.add(ProjectRecord(id=DEFAULT_PROJECT, name=DEFAULT_PROJECT))
        except IntegrityError:
            pass  # another process made it first

    def create(self, name: str) -> ProjectRecord:
        name = name.strip()
        if not _NAME.match(name):
            raise InvalidProjectNameError(
                f"project name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-'"
            )
        record = ProjectRecord(id=new_id(), name=name)
        try:
            with self.db.transaction() as session:
                if session.scalar(select(ProjectRecord.id).where(ProjectRecord.name == name)):
                    raise ConflictError(f"a project named {name!r} exists already")
                session.add(record)
        except IntegrityError as exc:
            raise ConflictError(f"a project named {name!r} exists already") from exc
        return record

    def list(self) -> list[ProjectRecord]:
        with self.db.transaction() as session:
            return list(session.scalars(select(ProjectRecord).order_by(ProjectRecord.created_at)))

    def resolve(self, name_or_id: str) -> ProjectRecord:
        """A project by its id or its name."""
        with self.db.transaction() as session:
            record = session.get(ProjectRecord, name_or_id) or session.scalar(
                select(ProjectRecord).where(ProjectRecord.name == name_or_id)
            )
        if record is None:
            raise ProjectNotFoundError(
                f"no project {name_or_id!r} (tiledetect projects list shows them)"
            )
        return record


class ApiKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, project_id: str, name: str = "") -> tuple[ApiKeyRecord, str]:
        """A new key and its token; the token is returned only here and never stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id=new_id(),
            project_id=project_id,
            name=name,
            prefix=token[:_PREFIX_CHARS],
            secret_hash=hash_token(token),
        )
        with self.db.transaction() as session:
            session.add(record)
        return record, token

    def list(self, project_id: str | None = None) -> list[ApiKeyRecord]:
        query = select(ApiKeyRecord).order_by(ApiKeyRecord.created_at)
        if project_id is not None:
            query = query.where(ApiKeyRecord.project_id == project_id)
        with self.db.transaction() as session:
            return list(session.scalars(query))

    def revoke(self, key_id: str) -> ApiKeyRecord:
        with self.db.transaction() as session:
            record = session.get(ApiKeyRecord, key_id)
            if record is None:
                raise ApiKeyNotFoundError(f"no API key with id {key_id!r}")
            if record.revoked_at is None:
                record.revoked_at = utcnow()
        return record

    def authenticate(self, token: str) -> str:
        """The project a token opens; AuthenticationError for an unknown or revoked one."""
        with self.db.transaction() as session:
            record = session.scalar(
                select(ApiKeyRecord).where(ApiKeyRecord.secret_hash == hash_token(token))
            )
        if record is None:
            raise AuthenticationError("the API key is not valid")
        if record.revoked_at is not None:
            raise AuthenticationError(f"the API key {record.prefix}... was revoked")
        return record.project_id
