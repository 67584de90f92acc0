# ruff: noqa: F811  (pytest fixtures imported by name from _io_fixtures)
"""Storable state: a snapshot survives bytes, resumes exactly, and refuses the wrong model."""

from __future__ import annotations

import pytest
import torch

from model import load
from model.hf import load_hf_dir
from model.state_io import (
    StateFormatError,
    StateMismatchError,
    snapshot_from_bytes,
    snapshot_to_bytes,
)
from model.transformer import CausalLM
from tests.model._io_fixtures import smollm2, smollm2_gguf, tiny_llama  # noqa: F401

TOL = 1e-4


@pytest.fixture(scope="module")
def jamba(checkpoint_factory) -> CausalLM:
    return load_hf_dir(checkpoint_factory("v01_pattern").path)


def ids(model: CausalLM, length: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (length,), generator=gen).tolist()


@torch.inference_mode()
def test_stored_state_resumes_exactly(jamba, kernel_backend):
    history, more = ids(jamba, 37, seed=1), ids(jamba, 5, seed=2)
    cache = jamba.new_cache(1, 64)
    jamba(torch.tensor([history]), cache=cache)
    blob = snapshot_to_bytes(cache.snapshot(), "tiny-jamba", history)

    state = snapshot_from_bytes(blob, jamba, model_id="tiny-jamba")
    assert state.token_ids == history and state.seq_len == 37 and state.model_id == "tiny-jamba"
    resumed = jamba.new_cache(1, 64)
    resumed.restore(state.snapshot)
    got = jamba(torch.tensor([more]), cache=resumed)[:, -1, :]
    want = jamba(torch.tensor([history + more]))[:, -1, :]
    err = (got - want).abs().max()
    print(f"resume from bytes: max logit err {err:.2e}, state {len(blob)} bytes")
    assert err <= TOL
    # Greedy continuation from the stored state == from an uninterrupted cache.
    assert _greedy(jamba, got, resumed, 6) == _greedy(jamba, want, _prefilled(jamba, history + more), 6)


def _prefilled(model: CausalLM, prompt: list[int]):
    cache = model.new_cache(1, 64)
    model(torch.tensor([prompt]), cache=cache)
    return cache


def _greedy(model: CausalLM, logits: torch.Tensor, cache, steps: int) -> list[int]:
    out = []
    for _ in range(steps):
        token = int(logits.argmax(-1))
        out.append(token)
        logits = model(torch.tensor([[token]]), cache=cache)[:, -1, :]
    return out


@torch.inference_mode()
def test_a_state_is_refused_by_another_model_or_dtype(jamba, checkpoint_factory, kernel_backend):
    history = ids(jamba, 9, seed=3)
    cache = jamba.new_cache(1, 16)
    jamba(torch.tensor([history]), cache=cache)
    blob = snapshot_to_bytes(cache.snapshot(), "tiny-jamba", history)

    other = load_hf_dir(checkpoint_factory("dense_3b_like").path)
    with pytest.raises(StateMismatchError, match="config hash"):
        snapshot_from_bytes(blob, other)
    with pytest.raises(StateMismatchError, match="not 'other-name'"):
        snapshot_from_bytes(blob, jamba, model_id="other-name")
    half = load_hf_dir(checkpoint_factory("v01_pattern").path, dtype=torch.bfloat16)
    with pytest.raises(StateMismatchError, match="bfloat16"):
        snapshot_from_bytes(blob, half)
    with pytest.raises(StateFormatError):
        snapshot_from_bytes(b"not a state at all", jamba)
    with pytest.raises(StateFormatError, match=r"truncated|damaged"):
        snapshot_from_bytes(blob[: len(blob) // 2], jamba)


def test_language_model_resume_equals_generating_from_scratch(tiny_llama):
    m = load(tiny_llama[0])
    history = m.encode("the the é the the")
    more = m.encode(" the é")
    kw = dict(max_new_tokens=10, stop_token_ids=[])
    blob = m.save_state(history)
    resumed = m.resume(blob, more, **kw)
    scratch = m.generate(history + more, **kw)
    assert resumed.token_ids == scratch.token_ids
    assert resumed.usage.cached_tokens == len(history)
    assert resumed.usage.prompt_tokens == len(history) + len(more)
    # With no continuation the stored next-token logits give the first token.
    assert m.resume(blob, **kw).token_ids == m.generate(history, **kw).token_ids


def test_load_quantizes_and_keeps_its_states_apart(tiny_llama):
    from model.quant import QuantLinear

    plain = load(tiny_llama[0])
    q8 = load(tiny_llama[0], quantize="int8")
    assert q8.quantization == "int8" and "int8" in repr(q8)
    assert isinstance(q8.model.layers[0].mixer.q_proj, QuantLinear)
    assert not isinstance(plain.model.layers[0].mixer.q_proj, QuantLinear)
    prompt = plain.encode("the the é the")
    with torch.inference_mode():
        a = plain.model(torch.tensor([prompt]))
        b = q8.model(torch.tensor([prompt]))
    assert 0 < (a - b).abs().max().item() < 0.05  # quantised: close, but not the same numbers
    # A state of the quantised model is not silently resumed by the float one.
    with pytest.raises(StateMismatchError, match="int8"):
        plain.load_state(q8.save_state(prompt))
    with pytest.raises(ValueError, match="int8, int4"):
        load(tiny_llama[0], quantize="int3")


def test_load_with_bf16_weights_computes_in_fp32_and_warns_about_emulated_bf16(
    tiny_llama, monkeypatch, caplog
):
    """``quantize="bf16"``: the projections are bf16 (half the bytes), the activations fp32;
    ``dtype=bfloat16`` on a CPU without native bf16 says so once and names that option."""
    import model.quant

    plain = load(tiny_llama[0])
    half = load(tiny_llama[0], quantize="bf16")
    assert half.quantization == "bf16" and half.model.dtype == torch.float32
    assert half.model.layers[0].mixer.q_proj.weight.dtype == torch.bfloat16
    prompt = plain.encode("the the é the")
    with torch.inference_mode():
        a = plain.model(torch.tensor([prompt]))
        b = half.model(torch.tensor([prompt]))
    assert b.dtype == torch.float32 and 0 < (a - b).abs().max().item() < 0.05
    with pytest.raises(StateMismatchError, match="bf16"):
        plain.load_state(half.save_state(prompt))

    monkeypatch.setattr(model.quant, "native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="model.api"):
        load(tiny_llama[0], dtype="bfloat16")
    assert [r.getMessage() for r in caplog.records if "quantize='bf16'" in r.getMessage()]
    caplog.clear()
    monkeypatch.setattr(model.quant, "native_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="model.api"):
        load(tiny_llama[0], dtype="bfloat16")
        load(tiny_llama[0], quantize="bf16")
    assert not caplog.records


def test_load_with_a_half_precision_kv_cache_generates_and_shares_states(tiny_llama):
    """``load(kv_dtype="float16")``: caches hold fp16 K/V (half the bytes), greedy text matches
    the fp32-cache model on this prompt, and a state stored by one resumes in the other."""
    plain = load(tiny_llama[0])
    half = load(tiny_llama[0], kv_dtype="float16")
    cache = half.model.new_cache(1, 8)
    assert cache.bytes_per_token() * 2 == plain.model.new_cache(1, 8).bytes_per_token()
    kw = dict(max_new_tokens=6, stop_token_ids=[])
    assert half.generate("the the", **kw).token_ids == plain.generate("the the", **kw).token_ids
    prompt = plain.encode("the the é the")
    assert half.resume(plain.save_state(prompt), **kw).token_ids == plain.resume(
        plain.save_state(prompt), **kw).token_ids
    with pytest.raises(ValueError, match="kv_dtype"):
        load(tiny_llama[0], kv_dtype="int8")


@pytest.mark.slow
def test_smollm2_resumes_a_stored_conversation(smollm2):
    messages = [{"role": "user", "content": "Tell me about the moon in two sentences."}]
    history = smollm2.encode_chat(messages)
    state = smollm2.load_state(smollm2.save_state(history))
    more = smollm2.tokenizer.encode(" The", add_special_tokens=False)
    with torch.inference_mode():
        cache = smollm2.model.new_cache(1, len(history) + 8)
        cache.restore(state.snapshot)
        got = smollm2.model(torch.tensor([more]), cache=cache)[:, -1, :]
        want = smollm2.model(torch.tensor([history + more]), logits_to_keep=1)[:, -1, :]
    err = (got - want).abs().max()
    print(f"SmolLM2 resume max logit err {err:.2e}")
    assert err <= TOL
    kw = dict(max_new_tokens=8)
    assert smollm2.resume(state, more, **kw).token_ids == smollm2.generate(history + more, **kw).token_ids


@pytest.mark.slow
def test_bench_state_quick_reports_every_number(smollm2):
    from maestro.bench.state import main

    report = main(json_output=True, quick=True)
    c, t, s = report["constrained_decoding"], report["ttft_shared_prefix"], report["stored_state"]
    assert c["tokens"] > 0 and c["ms_per_token_constrained"] > 0 and c["ms_per_token_unconstrained"] > 0
    assert min(t["cached_tokens"]) > 0 and t["cache_hits"] >= 1
    assert s["max_logit_err_vs_uninterrupted"] <= TOL
    assert s["state_bytes_llama_300m"] > s["state_bytes_jamba"] > 0
