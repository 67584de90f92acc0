"""``maestro bench gpu``: without CUDA it says so and measures nothing; on a GPU (``gpu``) its
quick run produces every comparison row (a smoke test of the harness)."""

from __future__ import annotations

import pytest
import torch

from maestro.bench import gpu as bench


def test_without_cuda_it_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = bench.main()
    assert "no CUDA device" in report["error"]
    assert "nothing to measure" in capsys.readouterr().out


@pytest.mark.gpu
def test_quick_run_on_a_gpu_has_every_row():
    report = bench.main(json_output=True, quick=True)
    names = {row["name"] for row in report["comparisons"]}
    assert names == {"decode@32 vs transformers-jamba", "prefill@64 vs transformers-jamba",
                     "decode@32 vs llama-300m", "prefill@64 vs llama-300m",
                     "decode@32 vs ours/no-graphs"}
    assert all(row["ours"] > 0 and row["baseline"] > 0 for row in report["comparisons"])
    assert report["measured"]["ours"]["graph_record_ms"] > 0
