"""Turning a database URL into a configured async engine, and driver errors into ours.

Two dialects, one code path:

- **SQLite** (the embedded default): WAL journal so readers never block the writer,
  ``busy_timeout`` so a second *process* waits instead of failing, ``foreign_keys=ON`` (off by
  default in SQLite!) on every new connection, and transactions we open ourselves: pysqlite's
  implicit transaction handling would otherwise start them late and make DDL non-transactional.
  Write transactions start with ``BEGIN IMMEDIATE`` so two writers queue on the write lock up
  front rather than both reading and then failing to upgrade ("database is locked").
- **PostgreSQL** at scale through asyncpg, with a connect timeout so an unreachable server fails
  in seconds with a message, not a hang.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from maestro.memory.errors import StorageError, UserError

#: Execution option set on the engine used for write transactions (see ``_on_begin``).
WRITE_OPTION = "maestro_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10.0

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def mask_url(url: str | URL) -> str:
    """The URL as text with any password replaced by ``***`` (safe for messages and logs)."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        text = str(url)
        if "@" in text and "://" in text:  # unparseable but may carry credentials: cut them out
            scheme, rest = text.split("://", 1)
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return text
    return parsed.render_as_string(hide_password=True)


def normalize_url(url: str) -> URL:
    """Parse ``url`` and pick the async driver Maestro uses for its dialect.

    ``sqlite:///x.db`` and ``postgresql://...`` (or ``postgres://``) are accepted, as are the
    explicit async forms. Anything else is a ``UserError`` naming the (masked) URL.
    """
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError) as exc:
        raise UserError(
            f"not a database URL: {mask_url(url)!r} "
            "(expected e.g. sqlite:///path/to/maestro.db or postgresql://user:pass@host/db)"
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    if backend not in _ASYNC_DRIVERS:
        raise UserError(
            f"unsupported database {backend!r} in {mask_url(parsed)}: "
            "Maestro runs on SQLite (sqlite:///...) or PostgreSQL (postgresql://...)"
        )
    explicit = parsed.drivername.partition("+")[2]
    allowed = ("aiosqlite",) if backend == "sqlite" else ("asyncpg", "psycopg")
    if explicit and explicit not in allowed:
        raise UserError(
            f"{mask_url(parsed)}: driver {explicit!r} is not async-capable here; use "
            f"{backend}:// or {backend}+{allowed[0]}://"
        )
    if explicit:
        return parsed
    return parsed.set(drivername=_ASYNC_DRIVERS[backend])


def sqlite_path(url: URL) -> Path | None:
    """The file behind an SQLite URL; ``None`` for in-memory databases."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)  # type: ignore[arg-type]


def create_engine(url: URL) -> AsyncEngine:
    """An async engine for a normalised URL, with the dialect-specific settings above."""
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
        return engine
    return create_async_engine(
        url,
        pool_size=10,
        max_overflow=40,
        pool_pre_ping=True,
        connect_args={"timeout": PG_CONNECT_TIMEOUT_S},
    )


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the driver (we issue BEGIN ourselves in _on_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Any) -> None:
    if conn.get_execution_options().get(WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def translate_error(exc: BaseException, url: URL | str) -> StorageError:
    """A ``StorageError`` that says what went wrong with which database, in user terms."""
    where = mask_url(url)
    root: BaseException = getattr(exc, "orig", None) or exc
    text = str(root).strip() or type(root).__name__
    if isinstance(root, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text
    ):
        return StorageError(
            f"{where} is not a valid SQLite database ({text}); "
            "move the file away or point MAESTRO_DATABASE_URL elsewhere",
            url=where,
        )
    if "database is locked" in text:
        return StorageError(f"{where}: database stayed locked for too long ({text})", url=where)
    if isinstance(root, OSError | TimeoutError) or type(root).__name__ in (
        "InvalidPasswordError",
        "InvalidCatalogNameError",
        "ConnectionDoesNotExistError",
        "CannotConnectNowError",
    ):
        return StorageError(f"cannot connect to {where}: {text}", url=where)
    if isinstance(exc, SQLAlchemyError):
        return StorageError(f"database error on {where}: {text}", url=where)
    return StorageError(f"database error on {where}: {type(root).__name__}: {text}", url=where)


__all__ = [
    "WRITE_OPTION",
    "create_engine",
    "mask_url",
    "normalize_url",
    "sqlite_path",
    "translate_error",
]
