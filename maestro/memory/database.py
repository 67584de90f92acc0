"""``Database``: one open connection pool plus the repositories that use it.

Usage::

    db = await Database.open()            # MAESTRO_DATABASE_URL, or SQLite in the data dir
    await db.memory.remember("alice", "prefers metric units")
    store = db.runs                       # the SQL RunStore for Agent(store=...)
    await db.close()

``open`` migrates an older schema forward (``migrate=True``, the default for the embedded
database) or insists it is current, and always refuses a schema newer than this code.

Single-writer discipline on SQLite: SQLite allows one writer at a time per file. Within a
process every write transaction first takes an ``asyncio.Lock``, so concurrent coroutines
queue in Python instead of spinning on the file lock; across processes ``BEGIN IMMEDIATE``
plus ``busy_timeout`` make a second process wait its turn. PostgreSQL needs neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from maestro.memory.engine import (
    WRITE_OPTION,
    create_engine,
    mask_url,
    normalize_url,
    sqlite_path,
    translate_error,
)
from maestro.memory.errors import StorageError, UserError
from maestro.memory.migrate import SchemaStatus, ensure_schema, schema_status

if TYPE_CHECKING:
    from maestro.memory.approvals import ApprovalRepository
    from maestro.memory.documents import DocumentRepository
    from maestro.memory.memories import MemoryRepository
    from maestro.memory.queue import RunQueue
    from maestro.memory.retention import Retention
    from maestro.memory.runstore import SqlRunStore
    from maestro.memory.states import StateRepository
    from maestro.memory.threads import ThreadRepository


class Database:
    """An open Maestro database. Create with ``await Database.open(url)``."""

    def __init__(self, engine: AsyncEngine, url: URL, display_url: str | None = None) -> None:
        self.engine = engine
        self.url = url
        #: The URL as the user wrote it, password masked: what every message shows.
        self.display_url = display_url or mask_url(url)
        self.dialect = url.get_backend_name()
        self._read = async_sessionmaker(engine, expire_on_commit=False)
        self._write = async_sessionmaker(
            engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        migrate: bool = True,
        create_dirs: bool | None = None,
        allow_pending: bool = False,
    ) -> Database:
        """Connect, check the schema (migrating it when ``migrate``), and return the database.

        ``create_dirs`` (default: only for the built-in default location) creates the parent
        directory of an SQLite file; an explicit URL to a missing directory is an error.
        ``migrate=False, allow_pending=True`` opens an out-of-date database without touching
        it (``maestro db status`` / ``upgrade`` use this to report before acting).
        """
        from maestro import settings

        if url is None:
            url = settings.database_url()
            if create_dirs is None:
                create_dirs = url == settings.default_database_url()
        parsed = normalize_url(url)
        path = sqlite_path(parsed)
        if path is not None:
            if create_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.parent.is_dir():
                raise UserError(
                    f"{mask_url(parsed)}: directory {path.parent} does not exist; create it or "
                    "choose another path"
                )
        db = cls(create_engine(parsed), parsed, mask_url(url))
        try:
            await db.ensure_schema(upgrade=migrate, allow_pending=allow_pending)
        except BaseException:
            await db.engine.dispose()
            raise
        return db

    async def ensure_schema(self, *, upgrade: bool, allow_pending: bool = False) -> SchemaStatus:
        """Refuse newer schemas; migrate older ones when ``upgrade``. Status *before*."""
        where = self.display_url
        try:
            async with self._connection(write=True) as conn:
                return await conn.run_sync(
                    lambda c: ensure_schema(
                        c, upgrade=upgrade, where=where, allow_pending=allow_pending
                    )
                )
        except StorageError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise translate_error(exc, self.display_url) from exc

    async def status(self) -> SchemaStatus:
        try:
            async with self._connection(write=False) as conn:
                return await conn.run_sync(schema_status)
        except (SQLAlchemyError, OSError) as exc:
            raise translate_error(exc, self.display_url) from exc

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _connection(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        engine = self.engine.execution_options(**{WRITE_OPTION: True}) if write else self.engine
        async with self._writer_turn(write), engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _writer_turn(self, write: bool) -> AsyncIterator[None]:
        if write and self._write_lock is not None:
            async with self._write_lock:
                yield
        else:
            yield

    @asynccontextmanager
    async def session(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session in one transaction, committed on success, rolled back on error.

        Driver errors leave as ``StorageError``; Maestro's own errors pass through unchanged.
        """
        maker = self._write if write else self._read
        try:
            async with self._writer_turn(write), maker() as session, session.begin():
                yield session
        except DBAPIError as exc:
            if exc.connection_invalidated:
                with suppress(Exception):
                    await self.engine.dispose()
            raise translate_error(exc, self.display_url) from exc
        except (SQLAlchemyError, OSError) as exc:
            raise translate_error(exc, self.display_url) from exc

    # Repositories: created on first use so importing one does not import them all.
    @cached_property
    def runs(self) -> SqlRunStore:
        from maestro.memory.runstore import SqlRunStore

        return SqlRunStore(self)

    @cached_property
    def queue(self) -> RunQueue:
        from maestro.memory.queue import RunQueue

        return RunQueue(self)

    @cached_property
    def threads(self) -> ThreadRepository:
        from maestro.memory.threads import ThreadRepository

        return ThreadRepository(self)

    @cached_property
    def memory(self) -> MemoryRepository:
        from maestro.memory.memories import MemoryRepository

        return MemoryRepository(self)

    @cached_property
    def documents(self) -> DocumentRepository:
        from maestro.memory.documents import DocumentRepository

        return DocumentRepository(self)

    @cached_property
    def states(self) -> StateRepository:
        from maestro.memory.states import StateRepository

        return StateRepository(self)

    @cached_property
    def approvals(self) -> ApprovalRepository:
        from maestro.memory.approvals import ApprovalRepository

        return ApprovalRepository(self)

    @cached_property
    def retention(self) -> Retention:
        from maestro.memory.retention import Retention

        return Retention(self)


__all__ = ["Database"]
