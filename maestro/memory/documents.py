"""Documents and chunks: the storage half of retrieval.

The retrieval tool (``tools/``) owns chunking, ingest and citation formatting; this module
owns durable storage and the two indexes it searches: full text (FTS5 / tsvector, maintained
by the database itself) and vectors (float32 BLOBs ranked in numpy, see ``search.py``).
``add_document`` + ``add_chunks`` run in one transaction each; a document whose chunks failed
to store can be deleted with ``delete_document`` (its chunks cascade).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, text

from maestro.memory.errors import NotFoundError, UserError
from maestro.memory.orm import ChunkRow, DocumentRow
from maestro.memory.records import Chunk, ChunkHit, ChunkInput, Document
from maestro.memory.search import (
    encode_vector,
    fts5_match,
    pg_tsquery,
    query_tokens,
    top_k_by_vector,
)

if TYPE_CHECKING:
    import numpy.typing as npt

    from maestro.memory.database import Database

_VECTOR_BATCH = 5000


def _document(row: DocumentRow) -> Document:
    return Document(
        id=row.id,
        source=row.source,
        title=row.title,
        content_hash=row.content_hash,
        meta=dict(row.meta),
        collection=row.collection,
        created_at=row.created_at,
    )


def _chunk(row: ChunkRow, doc: DocumentRow) -> Chunk:
    return Chunk(
        id=row.id,
        document_id=row.document_id,
        ordinal=row.ordinal,
        text=row.text,
        start_char=row.start_char,
        end_char=row.end_char,
        meta=dict(row.meta),
        source=doc.source,
        title=doc.title,
    )


class DocumentRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_document(
        self,
        source: str,
        *,
        title: str | None = None,
        content_hash: str | None = None,
        meta: dict[str, Any] | None = None,
        collection: str = "default",
        chunks: Sequence[ChunkInput] = (),
        embeddings: npt.NDArray[Any] | None = None,
    ) -> Document:
        """Store a document; with ``chunks`` (and their ``embeddings``) in the same transaction,
        so a failure leaves neither the document nor any of its chunks behind."""
        blobs = self._blobs(chunks, embeddings)
        async with self._db.session(write=True) as session:
            row = DocumentRow(
                source=source,
                title=title,
                content_hash=content_hash,
                meta=meta or {},
                collection=collection,
            )
            session.add(row)
            await session.flush()
            if chunks:
                session.add_all(self._rows(row.id, 0, chunks, blobs))
                await session.flush()
            return _document(row)

    @staticmethod
    def _blobs(
        chunks: Sequence[ChunkInput], embeddings: npt.NDArray[Any] | None
    ) -> list[bytes] | None:
        if embeddings is None:
            return None
        if len(embeddings) != len(chunks):
            raise UserError(f"{len(chunks)} chunks but {len(embeddings)} embeddings")
        return [encode_vector(v) for v in embeddings]

    @staticmethod
    def _rows(
        document_id: int, start: int, chunks: Sequence[ChunkInput], blobs: list[bytes] | None
    ) -> list[ChunkRow]:
        return [
            ChunkRow(
                document_id=document_id,
                ordinal=start + i,
                text=c.text,
                start_char=c.start_char,
                end_char=c.end_char,
                meta=dict(c.meta),
                embedding=blobs[i] if blobs else None,
            )
            for i, c in enumerate(chunks)
        ]

    async def find_document(
        self, *, content_hash: str, collection: str = "default"
    ) -> Document | None:
        """The document already ingested with this content hash (to skip re-ingesting)."""
        async with self._db.session() as session:
            row = await session.scalar(
                select(DocumentRow)
                .where(DocumentRow.content_hash == content_hash)
                .where(DocumentRow.collection == collection)
                .order_by(DocumentRow.id)
                .limit(1)
            )
            return _document(row) if row else None

    async def list_documents(self, collection: str | None = None) -> list[Document]:
        stmt = select(DocumentRow).order_by(DocumentRow.id)
        if collection is not None:
            stmt = stmt.where(DocumentRow.collection == collection)
        async with self._db.session() as session:
            return [_document(row) for row in await session.scalars(stmt)]

    async def delete_document(self, document_id: int) -> None:
        async with self._db.session(write=True) as session:
            result = await session.execute(delete(DocumentRow).where(DocumentRow.id == document_id))
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFoundError(f"no document {document_id}")

    async def add_chunks(
        self,
        document_id: int,
        chunks: Sequence[ChunkInput],
        embeddings: npt.NDArray[Any] | None = None,
    ) -> list[int]:
        """Append chunks (ordinals continue after existing ones); returns their ids in order."""
        blobs = self._blobs(chunks, embeddings)
        async with self._db.session(write=True) as session:
            if await session.get(DocumentRow, document_id) is None:
                raise NotFoundError(f"no document {document_id}")
            start = await session.scalar(
                select(func.coalesce(func.max(ChunkRow.ordinal) + 1, 0)).where(
                    ChunkRow.document_id == document_id
                )
            )
            rows = self._rows(document_id, int(start or 0), chunks, blobs)
            session.add_all(rows)
            await session.flush()
            return [row.id for row in rows]

    async def get_chunk(self, chunk_id: int) -> Chunk:
        async with self._db.session() as session:
            found = (
                await session.execute(
                    select(ChunkRow, DocumentRow)
                    .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
                    .where(ChunkRow.id == chunk_id)
                )
            ).first()
            if found is None:
                raise NotFoundError(f"no chunk {chunk_id}")
            return _chunk(found[0], found[1])

    async def get_chunks(self, chunk_ids: Sequence[int]) -> list[Chunk]:
        """Chunks in the order of ``chunk_ids`` (missing ids are left out)."""
        async with self._db.session() as session:
            found = (
                await session.execute(
                    select(ChunkRow, DocumentRow)
                    .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
                    .where(ChunkRow.id.in_(list(chunk_ids)))
                )
            ).all()
        by_id = {c.id: _chunk(c, d) for c, d in found}
        return [by_id[i] for i in chunk_ids if i in by_id]

    async def search_chunks_fulltext(
        self, query: str, k: int = 10, *, collection: str | None = None
    ) -> list[ChunkHit]:
        """Best ``k`` chunks by full-text relevance; score: higher is better."""
        tokens = query_tokens(query)
        if not tokens or k <= 0:
            return []
        coll = "AND d.collection = :coll" if collection is not None else ""
        params: dict[str, object] = {"k": k, "coll": collection}
        if self._db.dialect == "sqlite":
            sql = (
                "SELECT c.id, -bm25(chunks_fts) AS score FROM chunks_fts "
                "JOIN chunks c ON c.id = chunks_fts.rowid "
                "JOIN documents d ON d.id = c.document_id "
                f"WHERE chunks_fts MATCH :q {coll} ORDER BY score DESC, c.id LIMIT :k"
            )
            params["q"] = fts5_match(tokens)
        else:
            sql = (
                "SELECT c.id, ts_rank_cd(c.tsv, q) AS score "
                "FROM chunks c JOIN documents d ON d.id = c.document_id, "
                "to_tsquery('english', :q) AS q "
                f"WHERE c.tsv @@ q {coll} ORDER BY score DESC, c.id LIMIT :k"
            )
            params["q"] = pg_tsquery(tokens)
        async with self._db.session() as session:
            ranked = (await session.execute(text(sql), params)).all()
        chunks = {c.id: c for c in await self.get_chunks([cid for cid, _ in ranked])}
        return [ChunkHit(chunks[cid], float(s)) for cid, s in ranked if cid in chunks]

    async def search_chunks_vector(
        self, vector: npt.NDArray[Any], k: int = 10, *, collection: str | None = None
    ) -> list[ChunkHit]:
        """Best ``k`` chunks by cosine similarity to ``vector`` (chunks without one skipped)."""
        stmt = (
            select(ChunkRow.id, ChunkRow.embedding)
            .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
            .where(ChunkRow.embedding.is_not(None))
            .execution_options(yield_per=_VECTOR_BATCH)
        )
        if collection is not None:
            stmt = stmt.where(DocumentRow.collection == collection)
        best: list[tuple[int, float]] = []
        async with self._db.session() as session:
            result = await session.stream(stmt)
            async for batch in result.partitions(_VECTOR_BATCH):
                pairs = [(int(r[0]), bytes(r[1] or b"")) for r in batch]
                best = sorted(best + top_k_by_vector(vector, pairs, k), key=lambda p: -p[1])[:k]
        chunks = {c.id: c for c in await self.get_chunks([cid for cid, _ in best])}
        return [ChunkHit(chunks[cid], score) for cid, score in best if cid in chunks]

    async def count_chunks(self) -> int:
        async with self._db.session() as session:
            return int(await session.scalar(select(func.count()).select_from(ChunkRow)) or 0)
