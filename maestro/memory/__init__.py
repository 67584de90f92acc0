"""Durable storage for Maestro: runs, steps, memory, documents, model states, approvals.

SQLite in the user's data dir by default, any PostgreSQL by URL (``MAESTRO_DATABASE_URL``);
one schema managed by the Alembic migrations shipped in ``migrations/``. SQLAlchemy stays
inside this package: repositories return the dataclasses in ``records`` (and the core's
``RunRecord`` / ``StepRecord``), and every driver error leaves as a ``StorageError``.

Entry point: ``db = await Database.open(url_or_None)``, then ``db.runs`` (the SQL RunStore),
``db.queue``, ``db.threads``, ``db.memory``, ``db.documents``, ``db.states``,
``db.approvals``, ``db.retention``; ``await db.close()``.
"""

from __future__ import annotations

from maestro.memory.database import Database
from maestro.memory.engine import mask_url
from maestro.memory.errors import (
    NotFoundError,
    SchemaOutOfDateError,
    SchemaTooNewError,
    StorageError,
)
from maestro.memory.records import (
    Approval,
    Chunk,
    ChunkHit,
    ChunkInput,
    Document,
    MemoryHit,
    MemoryItem,
    MemoryKind,
    Message,
    ModelState,
    Provenance,
    Thread,
)
from maestro.memory.retention import PruneReport, RetentionPolicy
from maestro.memory.search import Embedder, reciprocal_rank_fusion

__all__ = [
    "Approval",
    "Chunk",
    "ChunkHit",
    "ChunkInput",
    "Database",
    "Document",
    "Embedder",
    "MemoryHit",
    "MemoryItem",
    "MemoryKind",
    "Message",
    "ModelState",
    "NotFoundError",
    "Provenance",
    "PruneReport",
    "RetentionPolicy",
    "SchemaOutOfDateError",
    "SchemaTooNewError",
    "StorageError",
    "Thread",
    "mask_url",
    "reciprocal_rank_fusion",
]
