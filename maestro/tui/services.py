"""What the TUI needs from the rest of Maestro, as small protocols and plain records.

The app never reaches for a global model, database or agent: :func:`maestro.tui.app.create_app`
takes a :class:`Services` bundle. ``maestro tui`` builds the real one (embedded or remote
model, the SQL database, the agent loop); tests build one with a ``ScriptedModel``, a
temporary database and a scripted event source. The seams are deliberately narrow:

- :class:`Store` — threads and their messages, memories, documents, runs. Implemented over
  ``maestro.memory.Database`` and in memory (``maestro.tui.stores``).
- :data:`RunLauncher` — ``(model, RunRequest) -> async iterator of events``: the one stream the
  run view consumes. The agent loop is one launcher; a plain chat turn is another.
- :class:`Ingestor` — ingest a path into the document index with progress; ``None`` when the
  retrieval tools are not installed, and the Documents screen says so.

Records here are frozen dataclasses detached from any database session, so they can cross
workers and be compared in tests.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from maestro.events import Event
from maestro.llm.base import Model
from maestro.messages import Message
from maestro.runs import RunStore


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    id: str
    title: str
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ChatEntry:
    """One line of a conversation as the chat pane shows it."""

    role: str
    content: str
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """A memory with its provenance: the run and/or message that produced it."""

    id: int
    kind: str
    text: str
    label: str | None = None
    run_id: str | None = None
    message_id: int | None = None
    updated_at: datetime | None = None

    @property
    def provenance(self) -> str:
        parts = []
        if self.run_id:
            parts.append(f"run {self.run_id[:12]}")
        if self.message_id is not None:
            parts.append(f"message #{self.message_id}")
        return ", ".join(parts) or "added by you"


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    id: int
    source: str
    title: str | None
    collection: str
    chunks: int | None = None


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: str
    task: str
    status: str
    created_at: float


class Store(Protocol):
    """Persistence the TUI reads and writes. Every method may raise ``MaestroError``."""

    description: str

    async def list_threads(self) -> list[ThreadInfo]: ...

    async def create_thread(self, title: str) -> ThreadInfo: ...

    async def thread_messages(self, thread_id: str) -> list[ChatEntry]: ...

    async def add_message(
        self, thread_id: str, role: str, content: str, run_id: str | None = None
    ) -> None: ...

    async def list_memories(self) -> list[MemoryInfo]: ...

    async def remember(self, text: str) -> MemoryInfo: ...

    async def edit_memory(self, memory_id: int, text: str) -> MemoryInfo: ...

    async def forget_memory(self, memory_id: int) -> None: ...

    async def list_documents(self) -> list[DocumentInfo]: ...

    async def list_runs(self, status: str | None = None) -> list[RunInfo]: ...

    def run_store(self) -> RunStore:
        """Where runs started from the TUI are journaled (so they can be resumed)."""
        ...

    async def close(self) -> None: ...


class ApprovalDecision(enum.StrEnum):
    """The three answers of the approval modal."""

    APPROVE = "approve"
    DENY = "deny"
    ALWAYS = "always"  # approve this call and every later call of the same tool in this run


class ApprovalPrompt(Protocol):
    """What the approval modal shows: the agent loop's ``ApprovalRequest`` and the
    ``ApprovalRequested`` event both have these attributes."""

    @property
    def run_id(self) -> str: ...

    @property
    def step_key(self) -> str: ...

    @property
    def tool(self) -> str: ...

    @property
    def args(self) -> dict[str, Any]: ...


ApprovalCallback = Callable[[ApprovalPrompt], Awaitable[bool]]
"""Asked before a tool that changes the world runs; ``True`` lets it run."""


@dataclass(slots=True)
class RunRequest:
    """Everything a launcher needs to start (or resume) one run."""

    task: str
    approve: ApprovalCallback
    history: list[Message] = field(default_factory=list)
    budget: str = "low"
    thread_id: str | None = None
    resume_run_id: str | None = None
    run_store: RunStore | None = None


RunLauncher = Callable[[Model, RunRequest], AsyncGenerator[Event, None]]
"""Starts a run and yields its events; cancelling the consumer cancels the run."""

ProgressCallback = Callable[[int, int, str], None]
"""``(done, total, current item)`` — called on the event loop while an ingest runs."""


class Ingestor(Protocol):
    """Adds files under a path to the document index."""

    async def ingest(self, path: str, progress: ProgressCallback) -> int:
        """Ingest ``path`` (a file or a directory); returns how many documents were added."""
        ...


ModelLoader = Callable[[], Model]
"""Builds the model. Runs in a thread: loading the embedded engine imports torch."""

StoreOpener = Callable[[], Awaitable[Store]]


@dataclass(slots=True)
class Services:
    """The app's dependencies; see the module docstring."""

    model_name: str
    load_model: ModelLoader
    open_store: StoreOpener
    launcher: RunLauncher
    ingestor: Ingestor | None = None
    #: Builds the ingestor once the store is open (ingest writes to that database).
    ingestor_for: Callable[[Store], Ingestor | None] | None = None
    ingest_unavailable_reason: str = (
        "document ingest needs the retrieval tools (tools.retrieval), which are not installed"
    )
    loader_for: Callable[[str], ModelLoader] | None = None  # for switching models
    model_choices: list[str] = field(default_factory=list)
    budget: str = "low"


__all__ = [
    "ApprovalCallback",
    "ApprovalDecision",
    "ApprovalPrompt",
    "ChatEntry",
    "DocumentInfo",
    "Ingestor",
    "MemoryInfo",
    "ModelLoader",
    "ProgressCallback",
    "RunInfo",
    "RunLauncher",
    "RunRequest",
    "Services",
    "Store",
    "StoreOpener",
    "ThreadInfo",
]
