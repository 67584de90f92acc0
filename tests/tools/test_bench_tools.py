"""Smoke runs of ``maestro bench tools`` pieces, so the benchmark cannot rot unnoticed."""

from __future__ import annotations

import pytest

from maestro.bench.tools import bench_retrieval, bench_sandbox


@pytest.mark.sandbox
def test_sandbox_bench_reports_numbers() -> None:
    report = bench_sandbox(starts=1, calls=3)
    assert report["session_start_ms"] > 0 and report["call_overhead_ms"] > 0
    assert report["start_ratio_vs_bare_python"] > 0


async def test_retrieval_bench_reports_numbers() -> None:
    report = await bench_retrieval(pages=2, chunks=50, queries=2)
    assert report["ingest_chunks"] >= 2 and report["ingest_pages_per_s"] > 0
    assert report["search_hybrid_ms"] > 0 and report["search_chunks"] == 50
