"""Plain dataclasses returned by the repositories: what callers outside this package see.

Frozen and detached from any session, so they can cross event loops, threads and processes,
be logged and be compared in tests. (Runs and steps use ``maestro.runs.RunRecord`` and
``StepRecord``, owned by the core, so every ``RunStore`` speaks the same types.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

MemoryKind = Literal["core", "archival"]
ApprovalStatus = Literal["pending", "approved", "rejected"]


@dataclass(frozen=True)
class Provenance:
    """Which run and/or message produced a memory (both optional: users add memories too)."""

    run_id: str | None = None
    message_id: int | None = None


@dataclass(frozen=True)
class Thread:
    id: str
    user_id: str | None
    agent_id: str | None
    title: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Message:
    id: int
    thread_id: str
    role: str
    content: str
    data: dict[str, Any]
    run_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class MemoryItem:
    id: int
    user_id: str
    kind: MemoryKind
    text: str
    label: str | None
    provenance: Provenance
    created_at: datetime
    updated_at: datetime
    has_embedding: bool = False


@dataclass(frozen=True)
class MemoryHit:
    """A recalled memory with its fused score and its rank in each list (None: not in it)."""

    item: MemoryItem
    score: float
    fulltext_rank: int | None
    vector_rank: int | None


@dataclass(frozen=True)
class Document:
    id: int
    source: str
    title: str | None
    content_hash: str | None
    meta: dict[str, Any]
    collection: str
    created_at: datetime


@dataclass(frozen=True)
class ChunkInput:
    """A chunk to store: the retrieval tool's chunker produces these."""

    text: str
    start_char: int | None = None
    end_char: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    id: int
    document_id: int
    ordinal: int
    text: str
    start_char: int | None
    end_char: int | None
    meta: dict[str, Any]
    source: str
    title: str | None


@dataclass(frozen=True)
class ChunkHit:
    """A search result: the chunk and a score where higher is better (bm25 or cosine)."""

    chunk: Chunk
    score: float


@dataclass(frozen=True)
class ModelState:
    key: str
    blob: bytes
    model_id: str | None
    config_hash: str | None
    dtype: str | None
    token_count: int | None
    meta: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Approval:
    id: int
    run_id: str | None
    step_key: str | None
    tool_name: str
    arguments: dict[str, Any]
    status: ApprovalStatus
    decided_by: str | None
    reason: str | None
    created_at: datetime
    decided_at: datetime | None
