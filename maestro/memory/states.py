"""Model state snapshots: the engine's serialised hybrid cache, stored by key.

An assistant that resumes a long conversation restores the state for the conversation's
prefix instead of re-reading it. The blob is opaque here; the metadata (model id, config hash,
dtype, token count) lets the loader refuse a snapshot taken with a different model, and
``last_used_at`` drives the retention policy (least recently used go first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select

from maestro.memory.orm import ModelStateRow, utcnow
from maestro.memory.records import ModelState

if TYPE_CHECKING:
    from maestro.memory.database import Database


def _state(row: ModelStateRow) -> ModelState:
    return ModelState(
        key=row.key,
        blob=bytes(row.blob),
        model_id=row.model_id,
        config_hash=row.config_hash,
        dtype=row.dtype,
        token_count=row.token_count,
        meta=dict(row.meta),
        created_at=row.created_at,
    )


class StateRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def save_state(self, key: str, blob: bytes, meta: dict[str, Any] | None = None) -> None:
        """Store (or replace) the snapshot under ``key``.

        Well-known ``meta`` keys ``model_id``, ``config_hash``, ``dtype`` and ``token_count``
        are stored in their own columns; the rest is kept as JSON.
        """
        extra = dict(meta or {})
        columns = {
            "model_id": extra.pop("model_id", None),
            "config_hash": extra.pop("config_hash", None),
            "dtype": extra.pop("dtype", None),
            "token_count": extra.pop("token_count", None),
        }
        async with self._db.session(write=True) as session:
            row = await session.get(ModelStateRow, key)
            if row is None:
                row = ModelStateRow(key=key, blob=blob)
                session.add(row)
            row.blob, row.size_bytes, row.meta = blob, len(blob), extra
            row.model_id, row.config_hash = columns["model_id"], columns["config_hash"]
            row.dtype, row.token_count = columns["dtype"], columns["token_count"]
            row.created_at = row.last_used_at = utcnow()

    async def load_state(self, key: str) -> ModelState | None:
        """The snapshot under ``key`` (marking it recently used), or ``None``."""
        async with self._db.session(write=True) as session:
            row = await session.get(ModelStateRow, key)
            if row is None:
                return None
            row.last_used_at = utcnow()
            return _state(row)

    async def delete_state(self, key: str) -> bool:
        async with self._db.session(write=True) as session:
            result = await session.execute(delete(ModelStateRow).where(ModelStateRow.key == key))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def total_bytes(self) -> int:
        async with self._db.session() as session:
            return int(
                await session.scalar(select(func.coalesce(func.sum(ModelStateRow.size_bytes), 0)))
                or 0
            )
