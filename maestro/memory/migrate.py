"""Schema versions: what the database has, what this code knows, and getting from one to other.

Alembic's scripts ship inside the package (``maestro/memory/migrations``), so an installed
Maestro can migrate its own database with no ``alembic.ini`` around. All functions here take
an open *synchronous* connection (``AsyncConnection.run_sync`` gives one) and run inside the
caller's transaction, so an upgrade is all-or-nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from maestro.memory.errors import SchemaOutOfDateError, SchemaTooNewError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands. ``current`` is ``None`` for an empty database."""

    current: str | None
    head: str
    known: bool  # False when ``current`` is a revision this code has never heard of

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def pending(self) -> bool:
        return self.known and not self.up_to_date


def alembic_config(connection: Connection | None = None) -> Config:
    """An in-memory Alembic config pointing at the packaged scripts."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships a first revision
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def schema_status(connection: Connection) -> SchemaStatus:
    script = ScriptDirectory.from_config(alembic_config())
    current = MigrationContext.configure(connection).get_current_revision()
    known = current is None
    if current is not None:
        known = any(rev.revision == current for rev in script.walk_revisions())
    return SchemaStatus(current=current, head=head_revision(), known=known)


def ensure_schema(
    connection: Connection, *, upgrade: bool, where: str, allow_pending: bool = False
) -> SchemaStatus:
    """Refuse a newer schema; apply pending migrations when ``upgrade``; else insist on head.

    ``allow_pending`` (with ``upgrade=False``) only refuses a newer schema: for commands that
    inspect or upgrade the database. Returns the status *before* any upgrade.
    """
    status = schema_status(connection)
    if not status.known:
        raise SchemaTooNewError(
            f"{where} has schema revision {status.current!r}, newer than this Maestro knows "
            f"(latest here: {status.head!r}). Upgrade Maestro, or use a different database; "
            "refusing to read or write it.",
            url=where,
        )
    if allow_pending and not upgrade:
        return status
    if status.current is None and not upgrade and _has_foreign_tables(connection):
        raise SchemaOutOfDateError(
            f"{where} holds tables but no Maestro schema version; is it another application's "
            "database?",
            url=where,
        )
    if status.pending:
        if not upgrade:
            raise SchemaOutOfDateError(
                f"{where} is at schema revision {status.current!r}, this Maestro needs "
                f"{status.head!r}: run `maestro db upgrade`.",
                url=where,
            )
        command.upgrade(alembic_config(connection), "head")
    return status


def upgrade_to(connection: Connection, revision: str) -> None:
    """Migrate to a specific revision (tests use this to build old schemas)."""
    command.upgrade(alembic_config(connection), revision)


def _has_foreign_tables(connection: Connection) -> bool:
    return bool(inspect(connection).get_table_names())


__all__ = [
    "MIGRATIONS_DIR",
    "SchemaStatus",
    "alembic_config",
    "ensure_schema",
    "head_revision",
    "schema_status",
    "upgrade_to",
]
