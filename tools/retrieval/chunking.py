"""Split a document into overlapping token windows that remember exactly where they came from.

A chunk is a slice ``text[start_char:end_char]`` of the loaded document — never rewritten —
so a quote found in a chunk maps back to exact document offsets, lines and pages. Windows are
counted in tokens: by default whitespace-separated words, a model-free proxy (an English word
is about 1.3 BPE tokens, so 200 words fit a 512-token embedder window with room to spare);
any tokenizer that returns character spans can be passed instead. Overlap keeps a sentence
that straddles a boundary whole in at least one chunk. PDF pages are hard boundaries, so a
PDF chunk always cites a single page. A window prefers to end at a paragraph
or sentence break in its last quarter, so chunks read as units.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maestro import UserError

Tokenizer = Callable[[str], list[tuple[int, int]]]
_WORD = re.compile(r"\S+")


def whitespace_tokens(text: str) -> list[tuple[int, int]]:
    """Character spans of whitespace-separated words."""
    return [m.span() for m in _WORD.finditer(text)]


@dataclass(frozen=True)
class TextChunk:
    text: str
    start_char: int
    end_char: int
    meta: dict[str, Any] = field(default_factory=dict)


class Locator:
    """Maps character offsets to 1-based line numbers and (for PDFs) page numbers."""

    def __init__(self, text: str, page_starts: list[int] | None = None) -> None:
        self.newlines = [i for i, ch in enumerate(text) if ch == "\n"]
        self.page_starts = page_starts or []

    def line(self, offset: int) -> int:
        return bisect.bisect_left(self.newlines, offset) + 1

    def page(self, offset: int) -> int | None:
        if not self.page_starts:
            return None
        return bisect.bisect_right(self.page_starts, offset)

    def describe(self, start: int, end: int) -> dict[str, Any]:
        meta: dict[str, Any] = {"line_start": self.line(start), "line_end": self.line(max(start, end - 1))}
        page = self.page(start)
        if page is not None:
            meta["page"] = page
            last = self.page(max(start, end - 1))
            if last != page:
                meta["page_end"] = last
        return meta


def _break_point(text: str, spans: list[tuple[int, int]], lo: int, hi: int) -> int:
    """Index (exclusive) of the token to end a window at: a paragraph or sentence end in the
    window's last quarter if there is one, else ``hi``."""
    floor = lo + max(1, (hi - lo) * 3 // 4)
    for j in range(hi - 1, floor - 1, -1):
        gap = text[spans[j][1] : spans[j + 1][0]] if j + 1 < len(spans) else ""
        if "\n\n" in gap:
            return j + 1
    for j in range(hi - 1, floor - 1, -1):
        if text[spans[j][1] - 1] in ".!?":
            return j + 1
    return hi


def chunk_text(
    text: str,
    *,
    chunk_tokens: int = 200,
    overlap_tokens: int = 40,
    page_starts: list[int] | None = None,
    tokenizer: Tokenizer = whitespace_tokens,
) -> list[TextChunk]:
    """Overlapping windows of at most ``chunk_tokens`` tokens, with offsets, lines and pages."""
    if chunk_tokens < 1 or not 0 <= overlap_tokens < chunk_tokens:
        raise UserError("need chunk_tokens >= 1 and 0 <= overlap_tokens < chunk_tokens")
    locator = Locator(text, page_starts)
    chunks: list[TextChunk] = []
    # Pages are hard boundaries, so every chunk of a PDF cites exactly one page.
    bounds = [*(page_starts or [0]), len(text)]
    for page_lo, page_hi in itertools.pairwise(bounds):
        spans = [(a + page_lo, b + page_lo) for a, b in tokenizer(text[page_lo:page_hi])]
        chunks += _windows(text, spans, locator, chunk_tokens, overlap_tokens)
    return chunks


def _windows(
    text: str, spans: list[tuple[int, int]], locator: Locator, chunk_tokens: int,
    overlap_tokens: int,
) -> list[TextChunk]:
    chunks: list[TextChunk] = []
    lo = 0
    while lo < len(spans):
        hi = min(lo + chunk_tokens, len(spans))
        if hi < len(spans):
            hi = _break_point(text, spans, lo, hi)
        start, end = spans[lo][0], spans[hi - 1][1]
        chunks.append(TextChunk(text[start:end], start, end, locator.describe(start, end)))
        if hi >= len(spans):
            break
        lo = max(hi - overlap_tokens, lo + 1)
    return chunks
