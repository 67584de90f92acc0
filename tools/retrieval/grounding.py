"""Check that an answer's quotes really appear in the chunks it cites.

Answers cite retrieved chunks as ``"quoted words" [c12]`` (the label the search tool prints).
A model under pressure invents quotes; this check finds each quoted span with its citation and
verifies the span occurs in that chunk's stored text — comparing case-insensitively with
whitespace and typographic quotes normalised, nothing looser — and locates it exactly in the
document (character offsets), so a reader can be shown the span. Bare citations ``[c12]``
must at least name a chunk that exists.

:func:`grounding_requirement` packages the check as a ``maestro.Requirement`` (mandatory by
default), scoring the fraction of verified quotes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from maestro import Requirement
from maestro.memory import NotFoundError
from tools.retrieval.index import Retriever

_QUOTED_CITATION = re.compile(r"[\"“”]([^\"“”]{3,}?)[\"“”]\s*\[c(\d+)\]")
_BARE_CITATION = re.compile(r"\[c(\d+)\]")


def _normalise(text: str) -> str:
    text = text.replace("’", "'").replace("‘", "'")
    return " ".join(text.split()).casefold()


def locate_quote(chunk_text: str, quote: str) -> tuple[int, int] | None:
    """(start, end) of ``quote`` within ``chunk_text`` modulo case and whitespace, or None."""
    target = _normalise(quote)
    if not target:
        return None
    # Map each character of the normalised chunk back to its original offset.
    norm_chars: list[str] = []
    origin: list[int] = []
    previous_space = True
    for i, ch in enumerate(chunk_text.replace("’", "'").replace("‘", "'")):
        if ch.isspace():
            if not previous_space:
                norm_chars.append(" ")
                origin.append(i)
            previous_space = True
            continue
        for folded in ch.casefold():
            norm_chars.append(folded)
            origin.append(i)
        previous_space = False
    found = "".join(norm_chars).find(target)
    if found < 0:
        return None
    return origin[found], origin[found + len(target) - 1] + 1


@dataclass
class QuoteCheck:
    chunk_id: int
    quote: str
    ok: bool
    reason: str
    span: tuple[int, int] | None = None  # document character offsets when found


@dataclass
class GroundingReport:
    checks: list[QuoteCheck] = field(default_factory=list)
    unknown_citations: list[int] = field(default_factory=list)

    @property
    def score(self) -> float:
        total = len(self.checks) + len(self.unknown_citations)
        if total == 0:
            return 0.0
        return sum(c.ok for c in self.checks) / total

    @property
    def ok(self) -> bool:
        return bool(self.checks) and self.score == 1.0

    def reason(self) -> str:
        if not self.checks and not self.unknown_citations:
            return "the answer quotes no cited source"
        failures = [f'"{c.quote[:80]}" [c{c.chunk_id}]: {c.reason}' for c in self.checks if not c.ok]
        failures += [f"[c{cid}] names no stored chunk" for cid in self.unknown_citations]
        if not failures:
            return f"all {len(self.checks)} quotes found in their cited chunks"
        return "unsupported: " + "; ".join(failures)


async def check_grounding(answer: str, retriever: Retriever) -> GroundingReport:
    """Verify every ``"quote" [cN]`` in ``answer`` against chunk N."""
    report = GroundingReport()
    cache: dict[int, Any] = {}

    async def chunk(cid: int) -> Any:
        if cid not in cache:
            try:
                cache[cid] = await retriever.db.documents.get_chunk(cid)
            except NotFoundError:
                cache[cid] = None
        return cache[cid]

    quoted_ids = set()
    for match in _QUOTED_CITATION.finditer(answer):
        quote, cid = match.group(1).strip(), int(match.group(2))
        quoted_ids.add(cid)
        stored = await chunk(cid)
        if stored is None:
            report.checks.append(QuoteCheck(cid, quote, False, "no such chunk"))
            continue
        where = locate_quote(stored.text, quote)
        if where is None:
            report.checks.append(QuoteCheck(cid, quote, False, "not found in the cited chunk"))
            continue
        base = stored.start_char or 0
        report.checks.append(QuoteCheck(cid, quote, True, "found",
                                        (base + where[0], base + where[1])))
    for match in _BARE_CITATION.finditer(answer):
        cid = int(match.group(1))
        if cid not in quoted_ids and await chunk(cid) is None and cid not in report.unknown_citations:
            report.unknown_citations.append(cid)
    return report


def grounding_requirement(retriever: Retriever, *, mandatory: bool = True) -> Requirement:
    """A Requirement whose check scores the fraction of quotes found in their cited chunks."""

    async def check(answer: Any) -> tuple[float, str]:
        report = await check_grounding(str(answer), retriever)
        return report.score, report.reason()

    return Requirement(
        description='Every quotation is copied verbatim from the chunk it cites, as "quote" [cN]',
        check=check, mandatory=mandatory, name="grounded_quotes",
    )
