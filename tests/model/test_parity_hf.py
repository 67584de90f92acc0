"""Parity with transformers: our CausalLM loaded through load_hf_dir vs the model that wrote it.

Four Jamba shapes (Jamba-v0.1's pattern, a dense Reasoning-3B-like model, the
Jamba-tiny-random shape, awkward sizes) and three Llama-family ones (tied embeddings, llama3
RoPE scaling, Qwen2's q/k/v biases): max |logit difference| <= 1e-4 on a 64-token input, and
32 greedy tokens identical to transformers' ``generate``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from model.hf import load_hf_dir
from model.transformer import CausalLM
from tests.model.conftest import JAMBA_CONFIGS, LLAMA_CONFIGS

ALL = [*JAMBA_CONFIGS, *LLAMA_CONFIGS]
TOL = 1e-4


def greedy(model: CausalLM, prompt: torch.Tensor, n: int) -> list[int]:
    """A minimal greedy loop on our cache (the real generate lives elsewhere)."""
    cache = model.new_cache(prompt.shape[0], prompt.shape[1] + n)
    logits = model(prompt, cache)
    out = []
    for _ in range(n):
        token = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out.append(int(token[0, 0]))
        logits = model(token, cache)
    return out


@pytest.mark.parametrize("name", ALL)
def test_logits_and_greedy_match_transformers(name, checkpoint_factory, kernel_backend):
    ckpt = checkpoint_factory(name)
    ours = load_hf_dir(ckpt.path)
    vocab = ours.config.vocab_size
    ids = torch.randint(3, vocab, (1, 64), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = ckpt.reference(ids).logits.float()
        got = ours(ids)
    err = (got - expected).abs()
    print(f"{name}: max abs logit diff {err.max():.3e}, mean {err.mean():.3e}")
    assert got.shape == expected.shape == (1, 64, vocab)
    assert got.dtype == torch.float32
    assert err.max() <= TOL

    prompt = ids[:, :16]
    with torch.no_grad():
        # No end token: both sides must produce all 32 tokens, EOS included if it wins.
        ckpt.reference.generation_config.eos_token_id = None
        ref_tokens = ckpt.reference.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
            do_sample=False, pad_token_id=0,
        )[0, 16:].tolist()
        our_tokens = greedy(ours, prompt, 32)
    assert our_tokens == ref_tokens


def test_config_matches_transformers_parameter_count(checkpoint_factory):
    for name in ALL:
        ckpt = checkpoint_factory(name)
        ours = load_hf_dir(ckpt.path)
        theirs = sum(p.numel() for p in ckpt.reference.parameters())
        assert ours.config.num_params() == theirs, name
        assert sum(p.numel() for p in ours.parameters()) == theirs, name


def test_bf16_error_within_twice_transformers_bf16_error(checkpoint_factory, kernel_backend):
    """flash-attention's rule: our bf16 error vs the fp32 reference is at most ~2x the error of
    the reference itself run in bf16.

    On these tiny random MoE checkpoints the max error is set by where bf16 rounding flips a
    token's top-2 experts, which is luck: over seeds 1-10 of this checkpoint the ratio ours /
    transformers was 0.54-2.73 for the max error (median 1.07) and 0.76-1.69 for the mean
    (median 0.97), the worst seeds those where ours flipped more routes (seed 2: 7 against 3;
    seed 6, the other way: 4 against 7). Seed 1, used here, gives 1.09 (max) and 1.13 (mean).
    """
    ckpt = checkpoint_factory("v01_pattern")
    bf16 = load_hf_dir(ckpt.path, dtype=torch.bfloat16)
    assert bf16.embed_tokens.weight.dtype == torch.bfloat16
    ids = torch.randint(3, bf16.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(3))
    reference = ckpt.reference
    with torch.no_grad():
        exact = reference(ids).logits.float()
        theirs = copy.deepcopy(reference).to(torch.bfloat16)(ids).logits.float()
        ours = bf16(ids)
    assert ours.dtype == torch.float32
    our_err = (ours - exact).abs().max().item()
    their_err = (theirs - exact).abs().max().item()
    print(f"bf16 max abs error vs fp32: ours {our_err:.3e}, transformers {their_err:.3e}")
    assert our_err <= 2 * their_err


def test_weights_are_mmapped_not_copied(checkpoint_factory):
    """fp32 file loaded as fp32: parameters share the file mapping (no second copy in RAM)."""
    ckpt = checkpoint_factory("dense_3b_like")
    model = load_hf_dir(ckpt.path)
    w = model.layers[0].mixer.in_proj.weight
    # A tensor built by torch.frombuffer on the mmap does not own a resizable storage.
    assert not w.untyped_storage().resizable()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["v01_pattern", "llama"])
def test_cuda_matches_the_cpu_reference(name, checkpoint_factory):
    """On a GPU (default kernel backend: Triton): fp32 logits vs transformers on the CPU, and
    step decoding vs one forward on the device."""
    ckpt = checkpoint_factory(name)
    ours = load_hf_dir(ckpt.path, device="cuda")
    ids = torch.randint(3, ours.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = ckpt.reference(ids).logits.float()
        got = ours(ids.cuda())
        cache = ours.new_cache(1, 64)
        steps = torch.cat([ours(ids[:, t : t + 1].cuda(), cache) for t in range(64)], dim=1)
    err = (got.cpu() - expected).abs().max().item()
    step_err = (steps - got).abs().max().item()
    print(f"{name} cuda: vs cpu reference {err:.3e}, steps vs forward {step_err:.3e}")
    assert err <= 1e-3 and step_err <= 1e-3


@pytest.mark.gpu
def test_cuda_attention_does_not_use_cudnn(checkpoint_factory):
    """cuDNN's SDPA plans anew for every key length (~46 ms per decode step on an H100): the
    attention layers must run without it, in prefill and in decode."""
    from torch.profiler import ProfilerActivity, profile

    ckpt = checkpoint_factory("v01_pattern")
    ours = load_hf_dir(ckpt.path, dtype=torch.bfloat16, device="cuda")
    ids = torch.randint(3, ours.config.vocab_size, (1, 32), device="cuda")
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        cache = ours.new_cache(1, 40)
        ours(ids, cache)
        ours(ids[:, -1:], cache)
    names = {e.key for e in prof.key_averages()}
    assert "aten::scaled_dot_product_attention" in names
    assert not any("cudnn_attention" in n for n in names), sorted(n for n in names if "attention" in n)
