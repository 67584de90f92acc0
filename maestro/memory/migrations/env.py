"""Alembic environment for Maestro's schema.

Maestro runs migrations itself (``Database.open`` / ``maestro db upgrade``) and hands the
already-open connection in ``config.attributes["connection"]``, so the whole upgrade happens in
the caller's transaction: on both PostgreSQL and SQLite DDL is transactional, and a failed
upgrade leaves nothing half-applied. Run from the ``alembic`` command line (to write a new
revision) it opens its own async engine from ``sqlalchemy.url``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from maestro.memory.orm import Base

FULLTEXT_OBJECTS = {"memory_fts", "chunks_fts"}


def _include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    # Full-text tables/columns are hand-written DDL; autogenerate must not try to drop them.
    if name is None:
        return True
    return not (
        name in FULLTEXT_OBJECTS
        or name.startswith("chunks_fts_")
        or name.startswith("memory_fts_")
        or name == "tsv"
    )


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_object=_include_object,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    from maestro.memory.engine import create_engine, normalize_url

    engine = create_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _url = context.config.get_main_option("sqlalchemy.url")
    if not _url:
        from maestro.settings import database_url

        _url = database_url()
    asyncio.run(_run_standalone(_url))
