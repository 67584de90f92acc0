"""The two :class:`~maestro.tui.services.Store` implementations.

:class:`DatabaseStore` adapts ``maestro.memory.Database`` (SQLite by default, PostgreSQL by
URL): what ``maestro tui`` uses, and what the Pilot tests use with a temporary SQLite file, so
"switching threads restores them from the database" is tested against the real tables.
:class:`InMemoryStore` keeps everything in dicts; the app falls back to it (and says so in the
status line) when the database cannot be opened, so a broken ``--db`` never costs the user the
conversation they are about to have.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from maestro.errors import UserError
from maestro.runs import InMemoryRunStore, RunStore
from maestro.tui.services import ChatEntry, DocumentInfo, MemoryInfo, RunInfo, ThreadInfo

if TYPE_CHECKING:
    from maestro.memory.database import Database
    from maestro.memory.records import MemoryItem

DEFAULT_USER = "local"


class InMemoryStore:
    """Threads, memories and runs in process memory; lost when the app exits."""

    description = "in memory (nothing is saved)"

    def __init__(self) -> None:
        self._threads: dict[str, ThreadInfo] = {}
        self._messages: dict[str, list[ChatEntry]] = {}
        self._memories: dict[int, MemoryInfo] = {}
        self._ids = itertools.count(1)
        self.runs = InMemoryRunStore()

    async def list_threads(self) -> list[ThreadInfo]:
        return sorted(
            self._threads.values(),
            key=lambda t: t.updated_at or datetime.min.replace(tzinfo=UTC),
            reverse=True,
        )

    async def create_thread(self, title: str) -> ThreadInfo:
        thread = ThreadInfo(uuid.uuid4().hex, title, datetime.now(UTC))
        self._threads[thread.id] = thread
        self._messages[thread.id] = []
        return thread

    async def thread_messages(self, thread_id: str) -> list[ChatEntry]:
        if thread_id not in self._messages:
            raise UserError(f"no thread {thread_id!r}")
        return list(self._messages[thread_id])

    async def add_message(
        self, thread_id: str, role: str, content: str, run_id: str | None = None
    ) -> None:
        if thread_id not in self._messages:
            raise UserError(f"no thread {thread_id!r}")
        self._messages[thread_id].append(ChatEntry(role, content, run_id))
        old = self._threads[thread_id]
        self._threads[thread_id] = ThreadInfo(old.id, old.title, datetime.now(UTC))

    async def list_memories(self) -> list[MemoryInfo]:
        return list(self._memories.values())

    async def remember(self, text: str) -> MemoryInfo:
        if not text.strip():
            raise UserError("cannot remember an empty text")
        item = MemoryInfo(next(self._ids), "archival", text, updated_at=datetime.now(UTC))
        self._memories[item.id] = item
        return item

    async def edit_memory(self, memory_id: int, text: str) -> MemoryInfo:
        if not text.strip():
            raise UserError("a memory cannot be edited to an empty text")
        old = self._memories.get(memory_id)
        if old is None:
            raise UserError(f"no memory {memory_id}")
        new = MemoryInfo(
            old.id, old.kind, text, old.label, old.run_id, old.message_id, datetime.now(UTC)
        )
        self._memories[memory_id] = new
        return new

    async def forget_memory(self, memory_id: int) -> None:
        if self._memories.pop(memory_id, None) is None:
            raise UserError(f"no memory {memory_id}")

    async def list_documents(self) -> list[DocumentInfo]:
        return []

    async def list_runs(self, status: str | None = None) -> list[RunInfo]:
        runs = sorted(self.runs.runs.values(), key=lambda r: r.created_at, reverse=True)
        return [
            RunInfo(r.id, r.task, r.status, r.created_at)
            for r in runs
            if status is None or r.status == status
        ]

    def run_store(self) -> RunStore:
        return self.runs

    async def close(self) -> None:
        return None


def _memory_info(item: MemoryItem) -> MemoryInfo:
    return MemoryInfo(
        id=item.id,
        kind=item.kind,
        text=item.text,
        label=item.label,
        run_id=item.provenance.run_id,
        message_id=item.provenance.message_id,
        updated_at=item.updated_at,
    )


class DatabaseStore:
    """The TUI's view of a ``maestro.memory.Database`` for one user."""

    def __init__(self, db: Database, user_id: str = DEFAULT_USER) -> None:
        self.db = db
        self.user_id = user_id
        self.description = db.display_url

    @classmethod
    async def open(cls, url: str | None = None, user_id: str = DEFAULT_USER) -> DatabaseStore:
        """Open (and migrate) the database at ``url``, or the embedded default."""
        from maestro.memory.database import Database

        return cls(await Database.open(url), user_id)

    async def list_threads(self) -> list[ThreadInfo]:
        threads = await self.db.threads.list_threads(self.user_id)
        return [ThreadInfo(t.id, t.title or "untitled", t.updated_at) for t in threads]

    async def create_thread(self, title: str) -> ThreadInfo:
        t = await self.db.threads.create_thread(user_id=self.user_id, title=title)
        return ThreadInfo(t.id, t.title or title, t.updated_at)

    async def thread_messages(self, thread_id: str) -> list[ChatEntry]:
        rows = await self.db.threads.list_messages(thread_id)
        return [ChatEntry(m.role, m.content, m.run_id) for m in rows]

    async def add_message(
        self, thread_id: str, role: str, content: str, run_id: str | None = None
    ) -> None:
        await self.db.threads.add_message(thread_id, role, content, run_id=run_id)

    async def list_memories(self) -> list[MemoryInfo]:
        return [_memory_info(m) for m in await self.db.memory.list(self.user_id)]

    async def remember(self, text: str) -> MemoryInfo:
        return _memory_info(await self.db.memory.remember(self.user_id, text))

    async def edit_memory(self, memory_id: int, text: str) -> MemoryInfo:
        return _memory_info(await self.db.memory.edit(self.user_id, memory_id, text))

    async def forget_memory(self, memory_id: int) -> None:
        await self.db.memory.forget(self.user_id, memory_id)

    async def list_documents(self) -> list[DocumentInfo]:
        docs = await self.db.documents.list_documents()
        return [DocumentInfo(d.id, d.source, d.title, d.collection) for d in docs]

    async def list_runs(self, status: str | None = None) -> list[RunInfo]:
        runs = await self.db.runs.list_runs(status=status)
        return [RunInfo(r.id, r.task, r.status, r.created_at) for r in runs]

    def run_store(self) -> RunStore:
        return self.db.runs

    async def close(self) -> None:
        await self.db.close()


__all__ = ["DEFAULT_USER", "DatabaseStore", "InMemoryStore"]
