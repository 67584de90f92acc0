"""`maestro bench core` runs and reports what it claims (quick sizes)."""

from __future__ import annotations

import json

from maestro.bench.core import main


def test_quick_core_bench_reports_overhead_memory_and_versions() -> None:
    report = main(json_output=True, quick=True)
    json.dumps(report)
    shapes = {row["shape"]: row for row in report["results"]}
    assert set(shapes) == {"independent", "chain"}
    for row in shapes.values():
        assert row["steps"] == 20
        # Generous bound (a loaded CI box is slow); the real target is checked by the bench.
        assert 0 < row["overhead_ms_per_step"] < 25
    assert report["memory"]["peak_python_mib"] > 0
    assert report["settings"]["model"] == "ScriptedModel"
    assert "pydantic" in report["versions"]
