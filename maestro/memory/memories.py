"""Per-user long-term memory: ``remember``, ``recall``, ``forget``, ``list``, ``edit``.

Two kinds, after MemGPT/Letta: **core** facts (a ``label`` such as ``"name"`` or
``"units"``; one value per label, re-remembering replaces it) meant to sit in every prompt,
and **archival** memories, searched with ``recall``. Every method takes the ``user_id`` and
every query filters on it: there is no code path that reads another user's rows, and
``forget``/``edit`` of a foreign id behave exactly like a missing id (no existence oracle).

``recall`` fuses a full-text ranking and, when an embedder is given, a vector ranking with
reciprocal rank fusion; without an embedder it is full-text only.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from sqlalchemy import delete, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.memory.errors import NotFoundError, UserError
from maestro.memory.orm import MemoryItemRow, User, utcnow
from maestro.memory.records import MemoryHit, MemoryItem, MemoryKind, Provenance
from maestro.memory.search import (
    Embedder,
    embed_texts,
    fts5_match,
    pg_tsquery,
    query_tokens,
    reciprocal_rank_fusion,
    top_k_by_vector,
)

if TYPE_CHECKING:
    from maestro.memory.database import Database

_KINDS = ("core", "archival")
#: Each ranking contributes this many candidates per requested result before fusion.
CANDIDATES_PER_RESULT = 4


def to_item(row: MemoryItemRow) -> MemoryItem:
    return MemoryItem(
        id=row.id,
        user_id=row.user_id,
        kind=row.kind,  # type: ignore[arg-type]
        text=row.text,
        label=row.label,
        provenance=Provenance(run_id=row.source_run_id, message_id=row.source_message_id),
        created_at=row.created_at,
        updated_at=row.updated_at,
        has_embedding=row.embedding is not None,
    )


async def ensure_user(session: AsyncSession, user_id: str) -> None:
    if not user_id or not user_id.strip():
        raise UserError("user_id must be a non-empty string")
    if await session.get(User, user_id) is None:
        session.add(User(id=user_id))
        await session.flush()


class MemoryRepository:
    """The memory API. ``embed`` (texts -> (n, dim) array) is the default embedder."""

    def __init__(self, db: Database, embed: Embedder | None = None) -> None:
        self._db = db
        self.embed = embed

    async def remember(
        self,
        user_id: str,
        text: str,
        kind: MemoryKind = "archival",
        *,
        label: str | None = None,
        provenance: Provenance | None = None,
        embed: Embedder | None = None,
    ) -> MemoryItem:
        """Store a memory; a core fact with an existing ``label`` is replaced, not duplicated."""
        if kind not in _KINDS:
            raise UserError(f"memory kind must be 'core' or 'archival', not {kind!r}")
        if not text.strip():
            raise UserError("cannot remember an empty text")
        if kind == "core" and not label:
            label = "fact"
        embedder = embed or self.embed
        blob = embed_texts(embedder, [text])[0] if embedder else None  # before the transaction
        prov = provenance or Provenance()
        async with self._db.session(write=True) as session:
            await ensure_user(session, user_id)
            row: MemoryItemRow | None = None
            if kind == "core":
                row = await session.scalar(
                    select(MemoryItemRow).where(
                        MemoryItemRow.user_id == user_id,
                        MemoryItemRow.kind == "core",
                        MemoryItemRow.label == label,
                    )
                )
            if row is None:
                row = MemoryItemRow(user_id=user_id, kind=kind, label=label, text=text)
                session.add(row)
            row.text, row.embedding, row.updated_at = text, blob, utcnow()
            row.source_run_id, row.source_message_id = prov.run_id, prov.message_id
            await session.flush()
            return to_item(row)

    async def remember_many(
        self,
        user_id: str,
        texts: builtins.list[str],
        *,
        provenance: Provenance | None = None,
        embed: Embedder | None = None,
    ) -> int:
        """Store many archival memories in one transaction (imports, benchmarks)."""
        if any(not t.strip() for t in texts):
            raise UserError("cannot remember an empty text")
        embedder = embed or self.embed
        blobs = embed_texts(embedder, texts) if embedder and texts else [None] * len(texts)
        prov = provenance or Provenance()
        now = utcnow()
        rows = [
            {
                "user_id": user_id,
                "kind": "archival",
                "label": None,
                "text": t,
                "embedding": b,
                "source_run_id": prov.run_id,
                "source_message_id": prov.message_id,
                "created_at": now,
                "updated_at": now,
            }
            for t, b in zip(texts, blobs, strict=True)
        ]
        async with self._db.session(write=True) as session:
            await ensure_user(session, user_id)
            if rows:
                await session.execute(insert(MemoryItemRow), rows)
        return len(rows)

    async def recall(
        self,
        user_id: str,
        query: str,
        k: int = 5,
        *,
        embed: Embedder | None = None,
        kind: MemoryKind | None = None,
    ) -> builtins.list[MemoryHit]:
        """The ``k`` memories of ``user_id`` most relevant to ``query``, best first."""
        if k <= 0:
            return []
        embedder = embed or self.embed
        query_vec = None
        if embedder is not None:
            import numpy as np

            query_vec = np.asarray(embedder([query]), dtype=np.float32)[0]
        pool = max(k * CANDIDATES_PER_RESULT, 20)
        async with self._db.session() as session:
            fulltext = await self._fulltext_ids(session, user_id, query, pool, kind)
            vector: builtins.list[int] = []
            if query_vec is not None:
                stmt = select(MemoryItemRow.id, MemoryItemRow.embedding).where(
                    MemoryItemRow.user_id == user_id, MemoryItemRow.embedding.is_not(None)
                )
                if kind:
                    stmt = stmt.where(MemoryItemRow.kind == kind)
                rows = (await session.execute(stmt)).all()
                vector = [i for i, _ in top_k_by_vector(query_vec, rows, pool)]  # type: ignore[arg-type]
            fused = reciprocal_rank_fusion([fulltext, vector])[:k]
            if not fused:
                return []
            ids = [item_id for item_id, _ in fused]
            found = await session.scalars(
                select(MemoryItemRow).where(
                    MemoryItemRow.id.in_(ids), MemoryItemRow.user_id == user_id
                )
            )
            by_id = {row.id: to_item(row) for row in found}
        ft_rank = {item_id: r for r, item_id in enumerate(fulltext, start=1)}
        vec_rank = {item_id: r for r, item_id in enumerate(vector, start=1)}
        return [
            MemoryHit(by_id[i], score, ft_rank.get(i), vec_rank.get(i))
            for i, score in fused
            if i in by_id
        ]

    async def _fulltext_ids(
        self, session: AsyncSession, user_id: str, query: str, limit: int, kind: str | None
    ) -> builtins.list[int]:
        tokens = query_tokens(query)
        if not tokens:
            return []
        kind_sql = "AND m.kind = :kind" if kind else ""
        params: dict[str, object] = {"uid": user_id, "limit": limit, "kind": kind}
        if self._db.dialect == "sqlite":
            # Owner token in the FTS table: see the first migration. bm25 weighs only `text`.
            sql = (
                "SELECT m.id FROM memory_fts JOIN memory_items m ON m.id = memory_fts.rowid "
                f"WHERE memory_fts MATCH :q AND m.user_id = :uid {kind_sql} "
                "ORDER BY bm25(memory_fts, 1.0, 0.0), m.id LIMIT :limit"
            )
            owner = user_id.encode().hex().upper() + "0"
            params["q"] = f'text : ({fts5_match(tokens)}) AND owner : "{owner}"'
        else:
            sql = (
                "SELECT m.id FROM memory_items m, to_tsquery('english', :q) AS q "
                f"WHERE m.user_id = :uid AND m.tsv @@ q {kind_sql} "
                "ORDER BY ts_rank_cd(m.tsv, q) DESC, m.id LIMIT :limit"
            )
            params["q"] = pg_tsquery(tokens)
        return list((await session.execute(text(sql), params)).scalars())

    async def get(self, user_id: str, memory_id: int) -> MemoryItem:
        async with self._db.session() as session:
            row = await session.get(MemoryItemRow, memory_id)
            if row is None or row.user_id != user_id:
                raise NotFoundError(f"user {user_id!r} has no memory {memory_id}")
            return to_item(row)

    async def edit(
        self, user_id: str, memory_id: int, text: str, *, embed: Embedder | None = None
    ) -> MemoryItem:
        """Replace a memory's text (re-embedding it when an embedder is available)."""
        if not text.strip():
            raise UserError("a memory cannot be edited to an empty text")
        embedder = embed or self.embed
        blob = embed_texts(embedder, [text])[0] if embedder else None
        async with self._db.session(write=True) as session:
            row = await session.get(MemoryItemRow, memory_id)
            if row is None or row.user_id != user_id:
                raise NotFoundError(f"user {user_id!r} has no memory {memory_id}")
            row.text, row.embedding, row.updated_at = text, blob, utcnow()
            await session.flush()
            return to_item(row)

    async def forget(self, user_id: str, memory_id: int) -> None:
        async with self._db.session(write=True) as session:
            result = await session.execute(
                delete(MemoryItemRow).where(
                    MemoryItemRow.id == memory_id, MemoryItemRow.user_id == user_id
                )
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFoundError(f"user {user_id!r} has no memory {memory_id}")

    async def forget_all(self, user_id: str) -> int:
        """Delete every memory of ``user_id``; returns how many were deleted."""
        async with self._db.session(write=True) as session:
            result = await session.execute(
                delete(MemoryItemRow).where(MemoryItemRow.user_id == user_id)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    async def core_profile(self, user_id: str) -> dict[str, str]:
        """The user's core facts as ``{label: text}``, for the system prompt."""
        items = await self.list(user_id, kind="core")
        return {item.label or "fact": item.text for item in items}

    async def list(
        self, user_id: str, *, kind: MemoryKind | None = None, limit: int | None = None
    ) -> builtins.list[MemoryItem]:
        """The user's memories, oldest first."""
        stmt = select(MemoryItemRow).where(MemoryItemRow.user_id == user_id)
        if kind:
            stmt = stmt.where(MemoryItemRow.kind == kind)
        stmt = stmt.order_by(MemoryItemRow.id).limit(limit)
        async with self._db.session() as session:
            return [to_item(row) for row in await session.scalars(stmt)]
