# ruff: noqa: F811  (pytest fixtures imported by name from _io_fixtures)
"""The default model end to end: pulled and verified, answers a question, streams, benchmarks."""

from __future__ import annotations

import hashlib

import pytest

from model.registry import DEFAULT_MODEL, REGISTRY
from tests.model._io_fixtures import smollm2, smollm2_gguf  # noqa: F401 - fixtures used by name


@pytest.mark.slow
def test_default_model_is_verified_in_the_cache(smollm2_gguf):
    digest = hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert digest == REGISTRY[DEFAULT_MODEL].sha256


@pytest.mark.slow
def test_chat_answers_the_capital_of_france(smollm2):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    result = smollm2.chat(messages, max_new_tokens=24)
    print(repr(result.text), result.finish_reason, result.usage)
    assert "Paris" in result.text
    assert result.finish_reason == "stop"  # ended on <|im_end|>, which is not in the text
    assert "<|im_end|>" not in result.text
    streamed = "".join(smollm2.chat_stream(messages, max_new_tokens=24))
    assert streamed == result.text


@pytest.mark.slow
def test_bench_engine_quick_reports_comparisons(capsys):
    from maestro.bench.engine import main

    report = main(json_output=True, quick=True)
    assert not report["errors"], report["errors"]
    # the speed worker's progress reaches our stderr while it runs; stdout stays for --json
    progress = capsys.readouterr().err
    assert "bench engine:   jamba-quick repetition 1/1, 32 tokens" in progress
    rows = {row["name"]: row for row in report["comparisons"]}
    assert {"jamba-quick prefill@64 fp32", "jamba-quick decode after 32 fp32",
            "jamba-quick decode after 32 int8", "jamba-quick cache bytes/token @32",
            "jamba-quick decode after 32 fp32 vs bandwidth bound",
            "jamba-quick prefill@64 fp32 vs matmul bound"} <= set(rows)
    assert any(name.startswith("jamba-quick peak RSS") for name in rows)
    for row in rows.values():
        assert {"name", "unit", "ours", "baseline", "baseline_name", "ratio"} <= set(row) <= {
            "name", "unit", "ours", "baseline", "baseline_name", "ratio", "target"}
        assert row["ours"] > 0 and row["baseline"] > 0
        higher = row["unit"] == "tok/s"
        expected = row["ours"] / row["baseline"] if higher else row["baseline"] / row["ours"]
        assert row["ratio"] == pytest.approx(expected, rel=0.01)
    assert rows["jamba-quick prefill@64 fp32"]["baseline_name"] == "transformers fp32"
    assert report["machine"]["torch_version"]
