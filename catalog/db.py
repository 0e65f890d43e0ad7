"""Database engine and sessions. SQLite by default; any SQLAlchemy URL (PostgreSQL) works."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import Session, sessionmaker

from catalog.models import Base

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long background work that has a result to record waits for the database to come back.
OUTAGE_WAIT_S = 600.0


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # The server's threads and a concurrent `tiledetect ingest` process share one file.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    _create_schema(engine)
    return engine


def _create_schema(engine: Engine) -> None:
    """Tables and added columns. Server processes starting at once (workers, replicas) race to
    create them; whoever loses finds them made on its second look."""
    for attempt in range(3):
        try:
            Base.metadata.create_all(engine)
            add_missing_columns(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def add_missing_columns(engine: Engine) -> list[str]:
    """Add nullable columns that newer code declares to tables an older version created.

    create_all makes missing tables only; additive changes are all this project has made to
    existing tables, so this small upgrade (no data rewritten) keeps old catalogues opening.
    Returns "table.column" for each column added.
    """
    existing = inspect(engine)
    added = []
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            if not existing.has_table(table.name):
                continue
            present = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                if not column.nullable:
                    raise RuntimeError(
                        f"the catalogue's table {table.name} lacks the required column "
                        f"{column.name}; it needs a migration"
                    )
                kind = column.type.compile(dialect=engine.dialect)
                connection.execute(
                    text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}')
                )
                added.append(f"{table.name}.{column.name}")
    return added


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """Owns the engine; hands out short transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


# Unavailability ---------------------------------------------------------------------------------


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached right now (server stopped, restarting
    or unreachable, connection dropped, SQLite file locked): worth retrying later, and no fault
    of the request or the data."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if isinstance(exc.orig, sqlite3.Error):
        # SQLite raises OperationalError for faults too (no such table, syntax errors).
        return "locked" in str(exc.orig).lower()
    return isinstance(exc, OperationalError | InterfaceError)


# Words of the drivers' messages -> a short reason that names no host, user or password.
_REASONS = (
    ("locked", "the database file is locked by another writer"),
    ("refused", "the database server refuses connections"),
    ("shutting down", "the database server is shutting down"),
    ("starting up", "the database server is starting up"),
    ("terminating connection", "the database server closed the connection"),
    ("timeout", "the database server did not answer in time"),
    ("timed out", "the database server did not answer in time"),
)


def unavailable_reason(exc: BaseException) -> str:
    """Why the database is unavailable, in a few words safe to show to any client."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    for words, reason in _REASONS:
        if words in text:
            return reason
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "the connection to the database was lost"
    return "the database cannot be reached"


def retry_unavailable(
    call: Callable[[], T],
    what: str,
    wait_s: float = OUTAGE_WAIT_S,
    stop: threading.Event | None = None,
) -> T:
    """`call()`, called again with a growing pause while the database is unavailable, for up to
    `wait_s` seconds of outage (or until `stop` is set); any other error is raised at once.
    For results that must not be lost to a database restart (a trained version, a job's end)."""
    stop = stop or threading.Event()
    pause, outage_began = 0.2, None
    while True:
        try:
            result = call()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if outage_began is None:
                outage_began = time.monotonic()
                log.warning(
                    "%s waits for the database (%s); retrying for up to %.0f s",
                    what,
                    unavailable_reason(exc),
                    wait_s,
                )
            if time.monotonic() - outage_began + pause > wait_s or stop.wait(pause):
                raise
            pause = min(2 * pause, 5.0)
            continue
        if outage_began is not None:
            log.warning(
                "%s: the database is back after %.0f s", what, time.monotonic() - outage_began
            )
        return result


class SkipWhileUnavailable:
    """Runs database calls that may be lost (progress reports, polls): while the database is
    unavailable they are skipped, logged once per outage, instead of failing the work."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._skipping = False

    def __call__(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            write(*args, **kwargs)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if not self._skipping:
                log.warning(
                    "%s: skipped while the database is unavailable (%s)",
                    self.what,
                    unavailable_reason(exc),
                )
            self._skipping = True
            return
        self._skipping = False
