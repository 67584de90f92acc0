"""Document ingest for the Documents screen, on top of the retrieval tools.

``tools.retrieval`` owns loading, chunking and indexing; this adapter walks the files one by
one so the screen can show a progress bar, reads each file in a worker thread (PDF parsing
can take a while and must not freeze the window), and stores it through
``Retriever.ingest_document`` — unchanged files (same content hash) are skipped, and a file
whose chunks fail to store leaves no half-ingested document behind.

Chunks are indexed for full-text search only: computing embeddings runs a sentence model
synchronously and would stall the UI for as long as it takes. ``maestro ingest`` adds vectors.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anyio.to_thread

from maestro.tui.services import Ingestor, ProgressCallback, Store
from maestro.tui.stores import DatabaseStore

UNAVAILABLE_NO_TOOLS = "document ingest needs the retrieval tools (tools.retrieval), not installed"
UNAVAILABLE_NO_DATABASE = "document ingest needs the database, which could not be opened"


class RetrievalIngestor:
    """Ingest a file or a directory (recursively) into the store's ``default`` collection."""

    def __init__(self, store: DatabaseStore, collection: str = "default") -> None:
        self.store = store
        self.collection = collection

    async def ingest(self, path: str, progress: ProgressCallback) -> int:
        from tools.retrieval import Retriever, load_path
        from tools.retrieval.loaders import iter_files

        files = iter_files([Path(path)])
        retriever = Retriever(self.store.db, embedder=None, collection=self.collection)
        added = 0
        progress(0, len(files), path)
        for done, file in enumerate(files, start=1):
            document = await anyio.to_thread.run_sync(load_path, file)
            if await retriever.ingest_document(document) is not None:
                added += 1
            progress(done, len(files), file.name)
        return added


def retrieval_available() -> bool:
    return importlib.util.find_spec("tools.retrieval") is not None


def ingestor_for(store: Store) -> Ingestor | None:
    """The ingestor for ``store``: None without the retrieval tools or without a database."""
    if not retrieval_available() or not isinstance(store, DatabaseStore):
        return None
    return RetrievalIngestor(store)


__all__ = [
    "UNAVAILABLE_NO_DATABASE",
    "UNAVAILABLE_NO_TOOLS",
    "RetrievalIngestor",
    "ingestor_for",
    "retrieval_available",
]
