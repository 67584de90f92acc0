"""The ``search_documents`` Maestro tool over a :class:`Retriever`."""

from __future__ import annotations

from maestro import Tool, ToolRetry, tool
from tools.retrieval.index import Retriever

CITE_HINT = ('Quote the passages you rely on verbatim and cite them right after the quote, '
             'like "exact words" [c12].')


def retrieval_tools(retriever: Retriever) -> list[Tool]:
    """``search_documents``: hybrid search returning citable chunks."""

    @tool
    async def search_documents(query: str, k: int = 5) -> str:
        """Search the ingested documents and return the most relevant passages with citations.

        Args:
            query: What to look for, in natural language or keywords.
            k: How many passages to return (1-10).
        """
        if not query.strip():
            raise ToolRetry("search_documents needs a non-empty query")
        results = await retriever.search(query, max(1, min(k, 10)))
        if not results:
            return "No matching passages. Try other keywords."
        return "\n\n".join(c.render() for c in results) + "\n\n" + CITE_HINT

    return [search_documents]
