"""``maestro bench engine``'s harness: engines alternate in one process, and every engine's rows
(llama.cpp's included) come from those alternated runs. The engines here are stand-ins with
known timings; the real engines run in ``tests/model/test_default_model.py``."""

from __future__ import annotations

import pytest

from maestro.bench import engine as bench

PLAN = {"prefill": [8, 16], "decode_after": [8], "steps": 4, "reps": 3, "probe_mib": 8,
        "matmul_probe": 64}


class _Timed:
    """An engine that logs its calls and reports fixed timings (seconds) and cache bytes."""

    def __init__(self, name: str, log: list[tuple[str, int, int, int]], prefill_s: float,
                 decode_s: float, nbytes: int | None) -> None:
        self.name, self.log = name, log
        self.prefill_s, self.decode_s, self.nbytes = prefill_s, decode_s, nbytes

    def run(self, ids, steps):
        self.log.append((self.name, ids.shape[1], steps, int(ids.sum())))
        return self.prefill_s, self.decode_s, self.nbytes


def test_engines_and_lengths_alternate_within_each_repetition_on_the_same_prompts():
    log: list[tuple[str, int, int, int]] = []
    engines = {
        "ours/int8": _Timed("ours/int8", log, 0.5, 0.1, 800),
        "llama.cpp/Q4_1": _Timed("llama.cpp/Q4_1", log, 0.25, 0.2, None),
    }
    heard: list[str] = []
    out = bench._interleaved(engines, vocab=100, plan=PLAN, progress=heard.append)

    runs = log[2:]  # after one warm-up run each
    assert [name for name, *_ in runs] == ["ours/int8", "llama.cpp/Q4_1"] * 6
    # every repetition runs every length (decode only after 8), so drift hits all lengths alike
    assert [(n, s) for _, n, s, _ in runs[::2]] == [(8, 4), (16, 0)] * 3
    prompts = {(n, total) for _, n, _, total in runs}
    assert len(prompts) == 2  # one prompt per length, the same for every engine and repetition
    assert out["ours/int8"]["prefill"] == {8: 16.0, 16: 32.0}
    assert out["llama.cpp/Q4_1"]["decode"] == {8: pytest.approx(20.0)}
    assert out["ours/int8"]["cache_bytes_per_token"] == {8: 100.0, 16: 50.0}
    assert out["llama.cpp/Q4_1"]["cache_bytes_per_token"] == {}  # it reports none
    assert set(out["bandwidth_bytes_per_s"]) == {8} and out["bandwidth_bytes_per_s"][8] > 0
    assert set(out["matmul_flops_per_s"]) == {8, 16} and min(out["matmul_flops_per_s"].values()) > 0
    assert [m.split(":")[0] for m in heard] == [
        f"repetition {r}/3, {n} tokens" for r in (1, 2, 3) for n in (8, 16)]


def test_a_worker_that_fails_is_reported_with_the_end_of_its_stderr():
    result = bench._spawn({"model": "smollm2-135m", "engine": "quality", "mode": "quality",
                           "plan": PLAN, "quick": False, "gguf": "/nonexistent/model.gguf"})
    assert result["error"].startswith("exit 1: ")
    assert "nonexistent" in result["error"]  # the worker's own error, not a generic one


def test_llama_cpp_runs_with_the_other_engines_only_where_it_is_installed(monkeypatch):
    monkeypatch.setattr(bench, "has_llama_cpp", lambda: True)
    assert "llama.cpp/Q4_1" in bench._engines("smollm2-135m")
    monkeypatch.setattr(bench, "has_llama_cpp", lambda: False)
    assert "llama.cpp/Q4_1" not in bench._engines("smollm2-135m")
    assert all(not e.startswith("llama.cpp") for e in bench._engines("jamba-300m"))


def test_bf16_engines_run_where_bf16_is_native_and_ours_keeps_bf16_weights_elsewhere(monkeypatch):
    import model.quant

    monkeypatch.setattr(model.quant, "native_bf16", lambda: True)
    assert {"ours/bf16", "llama-300m/bf16"} <= set(bench._engines("jamba-300m"))
    monkeypatch.setattr(model.quant, "native_bf16", lambda: False)
    engines = bench._engines("jamba-300m")
    assert "ours/bf16" in engines and "llama-300m/bf16" not in engines
    assert "transformers/bf16" not in bench._engines("smollm2-135m")


def test_bf16_hybrid_rows_compare_with_the_fp32_llama_where_its_bf16_did_not_run():
    model = "jamba-300m"
    results = {
        f"{model}/ours/fp32": {"prefill": {2048: 400.0}, "decode": {512: 20.0},
                               "decode_weight_bytes": 1000},
        f"{model}/ours/bf16": {"prefill": {2048: 380.0}, "decode": {512: 36.0},
                               "decode_weight_bytes": 500},
        f"{model}/llama-300m/fp32": {"prefill": {2048: 200.0}, "decode": {512: 18.0}},
        f"{model}/speed": {"bandwidth_bytes_per_s": {512: 25000.0}},
    }
    plan = {"prefill": [2048], "decode_after": [512], "steps": 16}
    rows = {(r["name"], r["baseline_name"]): (r["ratio"], r.get("target"))
            for r in bench._comparisons(model, results, plan)}
    assert rows[(f"{model} prefill@2048 bf16 vs Llama", "transformers Llama-300M fp32")] == (1.9, 1.0)
    assert rows[(f"{model} decode after 512 bf16 weights", "ours fp32")] == (1.8, None)
    assert rows[(f"{model} prefill@2048 bf16 weights", "ours fp32")] == (0.95, None)
    assert rows[(f"{model} decode after 512 bf16 vs bandwidth bound",
                 "bound (0.0 GB/s / 0 MiB)")] == (0.72, None)
    assert rows[(f"{model} decode after 512 fp32 vs bandwidth bound",
                 "bound (0.0 GB/s / 0 MiB)")] == (0.8, 0.9)
    assert not [name for name, _ in rows if "cache" in name and "bf16" in name]  # fp32 caches


def test_quantised_decode_is_compared_with_llama_cpp_from_the_same_run():
    model = "smollm2-135m"
    results = {
        f"{model}/ours/fp32": {"prefill": {512: 600.0}, "decode": {512: 40.0}},
        f"{model}/transformers/fp32": {"prefill": {512: 590.0}, "decode": {512: 20.0}},
        f"{model}/ours/int8": {"prefill": {512: 500.0}, "decode": {512: 110.0}},
        f"{model}/llama.cpp/Q4_1": {"prefill": {512: 280.0}, "decode": {512: 100.0}},
    }
    plan = {"prefill": [512], "decode_after": [512], "steps": 16}
    rows = bench._comparisons(model, results, plan)
    narrow = [r for r in rows if r["name"].endswith("weights")]
    assert [(r["name"], r["baseline_name"], r["ratio"]) for r in narrow] == [
        (f"{model} prefill@512 int8 weights", "ours fp32", 0.833)]  # int4 and bf16 did not run
    vs_cpp = [r for r in rows if r["baseline_name"] == "llama.cpp Q4_1"]
    assert {(r["name"], r["ratio"], r["target"]) for r in vs_cpp} == {
        (f"{model} decode after 512 int8", 1.1, 1.0),
        (f"{model} prefill@512 (ours fp32)", 2.143, 1.0),  # ratios are rounded to 3 places
    }


def test_attention_flops_follow_pytorchs_top_left_causal_mask():
    full = bench._attention_flops((1, 2, 4, 8), (1, 2, 6, 8), (1, 2, 6, 8), is_causal=False)
    assert full == 2 * 2 * (4 * 6) * (8 + 8)
    # causal, 4 queries over 4 keys: 1 + 2 + 3 + 4 pairs per head
    assert bench._attention_flops((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8), True) == 2 * 2 * 10 * 16
    # more queries than keys: the rows past the last key see every key
    more = bench._attention_flops((1, 1, 5, 8), (1, 1, 3, 8), (1, 1, 3, 8), is_causal=True)
    assert more == 2 * (6 + 2 * 3) * 16


def test_prefill_flops_count_every_projection_the_attention_and_the_kept_logits():
    """The quick Jamba's prefill, counted, against the same count by hand from its config."""
    import math

    import torch

    c = bench._jamba_hf_config(quick=True)
    model, vocab = bench._load("jamba-quick", "ours/fp32", {"quick": True})
    d, inner, experts, k = (c["hidden_size"], c["intermediate_size"], c["num_experts"],
                            c["num_experts_per_tok"])
    ed, state, rank = c["mamba_expand"] * d, c["mamba_d_state"], math.ceil(d / 16)
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = d // heads
    mamba = 2 * (d * 2 * ed + ed * (rank + 2 * state) + rank * ed + ed * d)
    attention = 2 * d * (heads * head_dim + 2 * kv_heads * head_dim + d)
    mlp = 3 * 2 * d * inner
    moe = 2 * d * experts + k * mlp  # router, then k experts per token
    per_token = 0
    for i in range(c["num_hidden_layers"]):
        is_attention = i % c["attn_layer_period"] == c["attn_layer_offset"]
        per_token += attention if is_attention else mamba
        per_token += moe if i % c["expert_layer_period"] == c["expert_layer_offset"] else mlp
    n = 32  # one chunk: one causal attention layer, and logits for the last token only
    scores = 2 * heads * (n * (n + 1) // 2) * 2 * head_dim
    torch.manual_seed(0)  # a routing where some expert gets few rows (the C++ matvec's)
    with torch.inference_mode():
        flops = bench._prefill_flops(bench._Ours(model), torch.randint(0, vocab, (1, n)))
    assert flops == n * per_token + scores + 2 * d * vocab


def test_prefill_is_compared_with_the_matmul_bound_of_the_same_run():
    model = "jamba-300m"
    results = {
        f"{model}/ours/fp32": {"prefill": {512: 500.0, 2048: 400.0},
                               "prefill_flops": {512: 512 * 0.3e9, 2048: 2048 * 0.35e9}},
        f"{model}/speed": {"matmul_flops_per_s": {512: 150e9, 2048: 140e9}},
    }
    plan = {"prefill": [512, 2048], "decode_after": [512], "steps": 16}
    rows = {r["name"]: r for r in bench._comparisons(model, results, plan)}
    row = rows[f"{model} prefill@2048 fp32 vs matmul bound"]
    assert row["baseline"] == 400.0 and row["ratio"] == 1.0 and row["target"] == 0.6
    assert row["baseline_name"] == "bound (140 GFLOP/s / 0.35 GFLOP/token)"
    short = rows[f"{model} prefill@512 fp32 vs matmul bound"]
    assert short["baseline"] == 500.0 and "target" not in short  # the target is at >= 2048
