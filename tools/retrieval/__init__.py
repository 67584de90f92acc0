"""Retrieval: ingest files, chunk them with offsets, hybrid search, citations, grounding."""

from tools.retrieval.chunking import TextChunk, chunk_text
from tools.retrieval.grounding import (
    GroundingReport,
    check_grounding,
    grounding_requirement,
    locate_quote,
)
from tools.retrieval.index import Citation, IngestReport, Retriever, default_embedder
from tools.retrieval.loaders import LoadedDocument, load_bytes, load_path
from tools.retrieval.tool import retrieval_tools

__all__ = [
    "Citation",
    "GroundingReport",
    "IngestReport",
    "LoadedDocument",
    "Retriever",
    "TextChunk",
    "check_grounding",
    "chunk_text",
    "default_embedder",
    "grounding_requirement",
    "load_bytes",
    "load_path",
    "locate_quote",
    "retrieval_tools",
]
