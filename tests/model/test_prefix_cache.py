# ruff: noqa: F811  (pytest fixtures imported by name from _io_fixtures)
"""Prefix-state cache: restoring a cached prefix gives the logits of a from-scratch prefill.

On a tiny Jamba-pattern checkpoint (Mamba states are only valid at the exact position they
were taken) and a tiny Llama through ``LanguageModel``; on SmolLM2 (slow) through ``chat``.
"""

from __future__ import annotations

import pytest
import torch

from model import load
from model.hf import load_hf_dir
from model.prefix_cache import PrefixCache
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
def scratch_logits(model: CausalLM, prompt: list[int]) -> torch.Tensor:
    return model(torch.tensor([prompt]))[:, -1, :]


@torch.inference_mode()
def cached(pc: PrefixCache, model: CausalLM, prompt: list[int], extra: int = 4):
    return pc.prefill(model, prompt, len(prompt) + extra)


def greedy(model: CausalLM, logits: torch.Tensor, cache, steps: int) -> list[int]:
    out = []
    with torch.inference_mode():
        for _ in range(steps):
            token = int(logits.argmax(-1))
            out.append(token)
            logits = model(torch.tensor([[token]]), cache=cache)[:, -1, :]
    return out


def test_restored_prefix_gives_the_logits_of_a_fresh_prefill(jamba, kernel_backend):
    pc = PrefixCache(block_size=16)
    a = ids(jamba, 50, seed=1)  # 3 blocks + a tail of 2 at the prompt end
    logits, cache, n = cached(pc, jamba, a)
    assert n == 0 and cache.seq_len == 50
    assert (logits - scratch_logits(jamba, a)).abs().max() <= TOL
    assert len(pc) == 4  # blocks at 16, 32, 48 and the tail at 50

    longer = a + ids(jamba, 21, seed=2)
    logits, cache, n = cached(pc, jamba, longer, extra=6)
    err = (logits - scratch_logits(jamba, longer)).abs().max()
    print(f"restore-then-prefill max err {err:.2e}")
    assert n == 50 and err <= TOL
    # Decoding on from the restored cache == decoding on from an uninterrupted run.
    fresh_logits, fresh_cache, _ = cached(PrefixCache(block_size=16), jamba, longer, extra=6)
    assert greedy(jamba, logits, cache, 6) == greedy(jamba, fresh_logits, fresh_cache, 6)
    assert pc.stats.hits == 1 and pc.stats.cached_tokens == 50 and pc.stats.prefilled_tokens == 71


def test_mamba_state_is_only_reused_at_its_exact_position(jamba, kernel_backend):
    pc = PrefixCache(block_size=16)
    a = ids(jamba, 40, seed=3)
    cached(pc, jamba, a)  # blocks at 16, 32; tail at 40
    branch = a[:37] + ids(jamba, 9, seed=4)  # shares 37 tokens: only the 32-token block fits
    logits, _, n = cached(pc, jamba, branch)
    assert n == 32
    assert (logits - scratch_logits(jamba, branch)).abs().max() <= TOL
    assert pc.match(a[:15]).length == 0  # no state inside the first block
    assert pc.match(a[:31]).length == 16


def test_a_fully_cached_prompt_runs_no_forward(jamba, kernel_backend, monkeypatch):
    pc = PrefixCache(block_size=16)
    a = ids(jamba, 23, seed=5)
    first, _, _ = cached(pc, jamba, a)

    def boom(*args, **kwargs):
        raise AssertionError("the model ran although the whole prompt was cached")

    monkeypatch.setattr(jamba, "forward", boom)
    again, cache, n = cached(pc, jamba, a)
    assert n == 23 and cache.seq_len == 23
    assert torch.equal(first, again)


def test_lru_stays_within_its_byte_budget_and_stays_correct(jamba, kernel_backend):
    probe = PrefixCache(block_size=16)
    cached(probe, jamba, ids(jamba, 16, seed=6))
    one_block = probe.nbytes()
    pc = PrefixCache(max_bytes=int(3.5 * one_block), block_size=16)
    a, b = ids(jamba, 48, seed=7), ids(jamba, 48, seed=8)
    cached(pc, jamba, a)
    cached(pc, jamba, b)  # evicts a's chain (and never a parent before its child)
    assert pc.nbytes() <= pc.max_bytes and pc.stats.evicted >= 3
    for key, entry in pc._entries.items():  # every entry is restorable: its parent is present
        assert entry.parent == b"" or entry.parent in pc._entries, key
    logits, _, n = cached(pc, jamba, [*b, 5, 6])
    assert n > 0 and (logits - scratch_logits(jamba, [*b, 5, 6])).abs().max() <= TOL
    logits, _, n = cached(pc, jamba, a)
    assert (logits - scratch_logits(jamba, a)).abs().max() <= TOL


def test_language_model_generates_the_same_with_the_cache(tiny_llama):
    plain = load(tiny_llama[0])
    with_cache = load(tiny_llama[0], prefix_cache_bytes=64 * 2**20)
    with_cache.prefix_cache.block_size = 8
    prompt = "the the é the"
    kw = dict(max_new_tokens=12, stop_token_ids=[])
    want = plain.generate(prompt, **kw).token_ids
    first = with_cache.generate(prompt, **kw)
    second = with_cache.generate(prompt, **kw)
    assert first.token_ids == want and second.token_ids == want
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == second.usage.prompt_tokens
    longer = prompt + " the"
    assert with_cache.generate(longer, **kw).token_ids == plain.generate(longer, **kw).token_ids


@pytest.mark.slow
def test_smollm2_chat_reuses_the_shared_system_prompt(smollm2):
    system = {"role": "system", "content": "You are a careful assistant. " * 40}
    q1 = [system, {"role": "user", "content": "What is 2 + 2?"}]
    q2 = [system, {"role": "user", "content": "Name a colour."}]
    smollm2.enable_prefix_cache(256 * 2**20, block_size=128)
    try:
        pc = smollm2.prefix_cache
        smollm2.chat(q1, max_new_tokens=1)
        ids2 = smollm2.encode_chat(q2)
        bounds = smollm2.message_boundaries(q2, None, ids2)
        system_len = bounds[0]
        with torch.inference_mode():
            logits, _, n = pc.prefill(smollm2.model, ids2, len(ids2) + 1, bounds)
            scratch = smollm2.model(torch.tensor([ids2]), logits_to_keep=1)[:, -1, :]
        err = (logits - scratch).abs().max()
        print(f"SmolLM2 restored {n} of {len(ids2)} tokens, max logit err {err:.2e}")
        assert n == system_len > 200 and err <= TOL
        r = smollm2.chat(q2, max_new_tokens=4)
        assert r.usage.cached_tokens == len(ids2)
    finally:
        smollm2.prefix_cache = None


def test_block_size_follows_the_prefill_chunk_of_the_device():
    """Blocks align with the prefill calls: 1024 tokens a call across the batch on the CPU
    (at least 128 a row); on a GPU, where a prefill call is bound by kernel launches, 8192."""
    from model.generate import prefill_chunk
    from model.prefix_cache import default_block_size

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert prefill_chunk(cpu) == 1024 == default_block_size(cpu)
    assert prefill_chunk(cpu, 4) == 256 and prefill_chunk(cpu, 16) == 128
    assert prefill_chunk(gpu) == 8192 == default_block_size(gpu)
    assert prefill_chunk(gpu, 4) == 2048 and prefill_chunk(gpu, 64) == 512
