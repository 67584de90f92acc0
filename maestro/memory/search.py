"""Ranking primitives shared by memory recall and chunk search.

- **Full text** uses the database's own index: FTS5 ``bm25`` on SQLite, ``ts_rank_cd`` over a
  GIN-indexed ``tsvector`` on PostgreSQL. User text is never passed through as query syntax:
  it is cut into word tokens that are OR-ed (quoted for FTS5), so ``"C++ AND"`` or an
  unbalanced quote is a search, not a syntax error.
- **Vectors** are float32 BLOBs, L2-normalised when stored, ranked by dot product in numpy
  (pgvector is not available on our machines; an SQLite extension cannot be loaded by the
  stdlib driver). Fine up to ~10^5–10^6 vectors per scope, which is what recall scans.
- **Reciprocal rank fusion** merges the rankings without calibrating their scores:
  ``score(d) = sum over lists of 1 / (k + rank(d))``, ranks starting at 1, ``k = 60``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

Embedder = Callable[[list[str]], "npt.NDArray[Any]"]
RRF_K = 60
MAX_QUERY_TOKENS = 32
_TOKEN = re.compile(r"\w+", re.UNICODE)


def query_tokens(text: str) -> list[str]:
    """Distinct lower-case word tokens of ``text``, in order, at most ``MAX_QUERY_TOKENS``."""
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(text.lower()):
        seen.setdefault(token, None)
    return list(seen)[:MAX_QUERY_TOKENS]


def fts5_match(tokens: Sequence[str]) -> str:
    """An FTS5 MATCH expression: any of the tokens, each quoted as a literal string."""
    return " OR ".join(f'"{token}"' for token in tokens)


def pg_tsquery(tokens: Sequence[str]) -> str:
    """A ``to_tsquery`` argument: any of the tokens (word characters only, so no syntax)."""
    return " | ".join(tokens)


def encode_vector(vector: npt.NDArray[Any]) -> bytes:
    """float32, L2-normalised, as raw bytes (a zero vector stays zero)."""
    import numpy as np

    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(arr))
    if norm > 0:
        arr = arr / norm
    return arr.astype(np.float32).tobytes()


def decode_vector(blob: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    import numpy as np

    return np.frombuffer(blob, dtype=np.float32)


def embed_texts(embed: Embedder, texts: list[str]) -> list[bytes]:
    """Call the embedder once for a batch and check its output shape."""
    import numpy as np

    from maestro.memory.errors import UserError

    matrix = np.asarray(embed(texts), dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(texts):
        raise UserError(
            f"embedder returned shape {matrix.shape} for {len(texts)} texts; expected (n, dim)"
        )
    return [encode_vector(row) for row in matrix]


def top_k_by_vector(
    query: npt.NDArray[Any], candidates: Iterable[tuple[int, bytes]], k: int
) -> list[tuple[int, float]]:
    """The ``k`` best (id, cosine) pairs; candidates of another dimension are skipped."""
    import numpy as np

    q = decode_vector(encode_vector(query))
    ids: list[int] = []
    rows: list[np.ndarray[Any, np.dtype[np.float32]]] = []
    for item_id, blob in candidates:
        vec = decode_vector(blob)
        if vec.shape == q.shape:
            ids.append(item_id)
            rows.append(vec)
    if not rows or k <= 0:
        return []
    scores = np.stack(rows) @ q
    k = min(k, len(ids))
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(ids[i], float(scores[i])) for i in best]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], k: int = RRF_K
) -> list[tuple[int, float]]:
    """Fuse ranked id lists; ties keep the order of first appearance (deterministic)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item_id in enumerate(ranking, start=1):
            scores[item_id] = scores.get(item_id, 0.0) + 1.0 / (k + rank)
    order = {item_id: i for i, item_id in enumerate(scores)}
    return sorted(scores.items(), key=lambda pair: (-pair[1], order[pair[0]]))


__all__ = [
    "RRF_K",
    "Embedder",
    "decode_vector",
    "embed_texts",
    "encode_vector",
    "fts5_match",
    "pg_tsquery",
    "query_tokens",
    "reciprocal_rank_fusion",
    "top_k_by_vector",
]
