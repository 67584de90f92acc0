"""Storage errors, placed in the one exception tree of ``maestro.errors``.

SQLAlchemy and driver exceptions never escape ``maestro.memory``: they are translated here,
with the database URL in the message (password masked) so a user knows *which* database
failed and what to do about it.
"""

from __future__ import annotations

from maestro.errors import MaestroError, UserError


class StorageError(MaestroError):
    """The database failed: unreachable, corrupt, locked for too long, or a query error."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.url = url
        super().__init__(message)


class SchemaTooNewError(StorageError):
    """The database was migrated by a newer Maestro than this one: refuse to touch it."""


class SchemaOutOfDateError(StorageError):
    """The database needs ``maestro db upgrade`` and automatic migration was turned off."""


class NotFoundError(UserError):
    """A record asked for by id does not exist (or belongs to another user)."""


__all__ = [
    "NotFoundError",
    "SchemaOutOfDateError",
    "SchemaTooNewError",
    "StorageError",
    "UserError",
]
