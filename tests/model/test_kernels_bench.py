"""The kernel benchmark runs end to end at tiny sizes and reports well-formed comparisons."""

from __future__ import annotations

import json

import pytest
import torch

from model import kernels
from model.kernels import bench


def test_bench_runs_and_reports_ratios(capsys):
    try:
        kernels.dispatch._registry["cpp"].load()
    except kernels.BackendUnavailable as exc:  # pragma: no cover - machines without a compiler
        pytest.skip(f"C++ kernels unavailable here: {exc}")
    threads = torch.get_num_threads()
    try:
        result = bench.run(lengths=(8, 24), channels=32, rank=4, threads=1, repeats=1, budget_s=0.05)
    finally:
        torch.set_num_threads(threads)
    ops = {(t["op"], t["length"]) for t in result["timings"]}
    assert ("selective_scan", 24) in ops and ("mamba_decode_step", 1) in ops
    for comparison in result["comparisons"]:
        assert comparison["ours"] > 0 and comparison["baseline"] > 0
        assert comparison["ratio"] == pytest.approx(comparison["baseline"] / comparison["ours"])
    names = {c["baseline_name"] for c in result["comparisons"]}
    assert "ref" in names
    json.dumps(result)  # JSON-serialisable for `maestro bench engine --json`
    table = bench.format_table(result)
    assert "selective_scan" in table and "machine:" in table
