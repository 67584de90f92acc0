"""Conversation threads and their messages (the chat history of assistants and the TUI).

Messages are append-only and ordered by their integer id, which both dialects assign in
commit order per writer; ``list_messages`` pages with ``after_id`` so a long thread is never
loaded whole by accident.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update

from maestro.memory.errors import NotFoundError
from maestro.memory.memories import ensure_user
from maestro.memory.orm import AgentRow, MessageRow, ThreadRow, utcnow
from maestro.memory.records import Message, Thread

if TYPE_CHECKING:
    from maestro.memory.database import Database


def _thread(row: ThreadRow) -> Thread:
    return Thread(row.id, row.user_id, row.agent_id, row.title, row.created_at, row.updated_at)


def _message(row: MessageRow) -> Message:
    return Message(
        row.id, row.thread_id, row.role, row.content, dict(row.data), row.run_id, row.created_at
    )


class ThreadRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_thread(
        self,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        title: str | None = None,
        thread_id: str | None = None,
    ) -> Thread:
        async with self._db.session(write=True) as session:
            if user_id is not None:
                await ensure_user(session, user_id)
            if agent_id is not None and await session.get(AgentRow, agent_id) is None:
                session.add(AgentRow(id=agent_id))
                await session.flush()
            row = ThreadRow(
                id=thread_id or uuid.uuid4().hex, user_id=user_id, agent_id=agent_id, title=title
            )
            session.add(row)
            await session.flush()
            return _thread(row)

    async def get_thread(self, thread_id: str) -> Thread:
        async with self._db.session() as session:
            row = await session.get(ThreadRow, thread_id)
            if row is None:
                raise NotFoundError(f"no thread {thread_id!r}")
            return _thread(row)

    async def list_threads(self, user_id: str | None = None, limit: int = 100) -> list[Thread]:
        stmt = select(ThreadRow).order_by(ThreadRow.updated_at.desc()).limit(limit)
        if user_id is not None:
            stmt = stmt.where(ThreadRow.user_id == user_id)
        async with self._db.session() as session:
            return [_thread(row) for row in await session.scalars(stmt)]

    async def add_message(
        self,
        thread_id: str,
        role: str,
        content: str,
        *,
        data: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> Message:
        return (await self.add_messages(thread_id, [(role, content, data or {})], run_id=run_id))[0]

    async def add_messages(
        self,
        thread_id: str,
        messages: Sequence[tuple[str, str, dict[str, Any]]],
        *,
        run_id: str | None = None,
    ) -> list[Message]:
        """Append (role, content, data) messages in one transaction: all or none are stored."""
        async with self._db.session(write=True) as session:
            now = utcnow()
            touched = await session.execute(
                update(ThreadRow).where(ThreadRow.id == thread_id).values(updated_at=now)
            )
            if touched.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFoundError(f"no thread {thread_id!r}")
            rows = [
                MessageRow(
                    thread_id=thread_id, role=role, content=content, data=data, run_id=run_id
                )
                for role, content, data in messages
            ]
            session.add_all(rows)
            await session.flush()
            return [_message(row) for row in rows]

    async def list_messages(
        self, thread_id: str, *, after_id: int = 0, limit: int | None = None
    ) -> list[Message]:
        stmt = (
            select(MessageRow)
            .where(MessageRow.thread_id == thread_id, MessageRow.id > after_id)
            .order_by(MessageRow.id)
            .limit(limit)
        )
        async with self._db.session() as session:
            return [_message(row) for row in await session.scalars(stmt)]

    async def count_messages(self, thread_id: str | None = None) -> int:
        stmt = select(func.count()).select_from(MessageRow)
        if thread_id is not None:
            stmt = stmt.where(MessageRow.thread_id == thread_id)
        async with self._db.session() as session:
            return int(await session.scalar(stmt) or 0)
