"""The decode invariants (CONVENTIONS.md): they catch most cache bugs at once.

On every tiny Jamba shape and on the Llama family:
- teacher-forced step-by-step decoding (chunk size 1) == one full forward;
- chunked prefill with chunk sizes 7 and 64 == one prefill;
- a left-padded batch of three different lengths == each sequence alone, also when the padded
  batch is prefilled in chunks and then decoded;
- snapshot -> restore -> continue == uninterrupted;
and the cache refuses, before touching anything, what it cannot hold.
"""

from __future__ import annotations

import pytest
import torch

from model.errors import ContextLengthError, ModelError
from model.hf import load_hf_dir
from model.transformer import CausalLM
from tests.model.conftest import JAMBA_CONFIGS

NAMES = [*JAMBA_CONFIGS, "llama", "mistral_window", "qwen2"]
TOL = 1e-4


@pytest.fixture(scope="module")
def models(checkpoint_factory):
    cache: dict[str, CausalLM] = {}

    def get(name: str) -> CausalLM:
        if name not in cache:
            cache[name] = load_hf_dir(checkpoint_factory(name).path)
        return cache[name]

    return get


def tokens(model: CausalLM, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=gen)


def chunked(model: CausalLM, ids: torch.Tensor, chunk: int, pad: torch.Tensor | None = None,
            max_len: int | None = None) -> torch.Tensor:
    cache = model.new_cache(ids.shape[0], max_len or ids.shape[1])
    outs = []
    for s in range(0, ids.shape[1], chunk):
        p = None if pad is None else pad[:, s : s + chunk]
        outs.append(model(ids[:, s : s + chunk], cache, pad_mask=p))
    assert cache.seq_len == ids.shape[1]
    return torch.cat(outs, dim=1)


def report(what: str, got: torch.Tensor, want: torch.Tensor) -> float:
    err = (got - want).abs()
    print(f"{what}: max {err.max():.3e} mean {err.mean():.3e}")
    return float(err.max())


@pytest.mark.parametrize("name", NAMES)
def test_step_decode_and_chunked_prefill_equal_full_forward(name, models, kernel_backend):
    model = models(name)
    ids = tokens(model, 2, 100)
    with torch.no_grad():
        full = model(ids)  # no cache at all
        one_prefill = chunked(model, ids, 100)
        assert report(f"{name} prefill-with-cache", one_prefill, full) <= TOL
        for chunk in (1, 7, 64):
            got = chunked(model, ids, chunk, max_len=128)
            assert report(f"{name} chunk {chunk}", got, one_prefill) <= TOL


@pytest.mark.parametrize("name", ["v01_pattern", "llama"])
def test_logits_to_keep_returns_the_last_positions(name, models, kernel_backend):
    model = models(name)
    ids = tokens(model, 2, 20)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 24)
        last = model(ids, cache, logits_to_keep=1)
        assert last.shape == (2, 1, model.config.vocab_size)
        assert report(f"{name} logits_to_keep", last, full[:, -1:]) <= TOL
        assert cache.seq_len == 20  # the whole prompt went into the cache
        assert model(ids[:, :3], logits_to_keep=5).shape == (2, 3, model.config.vocab_size)
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(ids, logits_to_keep=-1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk", [None, 7, 1])
def test_left_padded_batch_equals_each_alone(name, chunk, models, kernel_backend):
    model = models(name)
    lengths = [37, 20, 6]
    longest = max(lengths)
    seqs = [tokens(model, 1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    ids = torch.zeros(3, longest, dtype=torch.long)
    pad = torch.zeros(3, longest, dtype=torch.bool)
    for row, seq in enumerate(seqs):
        ids[row, longest - len(seq) :] = seq
        pad[row, longest - len(seq) :] = True
    follow = tokens(model, 3, 4, seed=99)  # teacher-forced decode after the prompt
    with torch.no_grad():
        cache = model.new_cache(3, longest + 4)
        step = chunk or longest
        batch_prefill = torch.cat(
            [model(ids[:, s : s + step], cache, pad_mask=pad[:, s : s + step])
             for s in range(0, longest, step)], dim=1)
        batch_decode = torch.cat([model(follow[:, t : t + 1], cache) for t in range(4)], dim=1)
        for row, seq in enumerate(seqs):
            alone_cache = model.new_cache(1, len(seq) + 4)
            alone = model(seq[None], alone_cache)
            alone_decode = torch.cat(
                [model(follow[row : row + 1, t : t + 1], alone_cache) for t in range(4)], dim=1)
            got = batch_prefill[row, longest - len(seq) :]
            assert report(f"{name} chunk {chunk} row {row} prefill", got, alone[0]) <= TOL
            assert report(f"{name} row {row} decode", batch_decode[row], alone_decode[0]) <= TOL


@pytest.mark.parametrize("name", ["v01_pattern", "llama"])
def test_snapshot_restore_continue_equals_uninterrupted(name, models, kernel_backend):
    model = models(name)
    ids = tokens(model, 2, 40)
    with torch.no_grad():
        cache = model.new_cache(2, 64)
        model(ids[:, :30], cache)
        snap = cache.snapshot()
        assert snap.seq_len == 30
        assert snap.nbytes() < cache.nbytes()
        cfg = model.config
        kv_per_token = 2 * 2 * cfg.num_key_value_heads * cfg.head_dim * 4  # K and V, B=2, fp32
        assert cache.bytes_per_token() == len(cfg.attention_layers) * kv_per_token
        mamba_bytes = 2 * cfg.mamba_d_inner * (cfg.mamba_d_conv - 1 + cfg.mamba_d_state) * 4
        fixed = len(cfg.mamba_layers) * mamba_bytes + 2 * 64 + 2 * 8  # + pad mask + counts
        assert cache.nbytes() == fixed + 64 * cache.bytes_per_token()
        uninterrupted = model(ids[:, 30:], cache)
        # The cache moved on; restoring rewinds it exactly.
        cache.restore(snap)
        assert cache.seq_len == 30
        again = model(ids[:, 30:], cache)
        assert report(f"{name} restore", again, uninterrupted) <= TOL
        # A snapshot also restores into a fresh cache of another max_len.
        fresh = model.new_cache(2, 48)
        fresh.restore(snap)
        resumed = torch.cat([model(ids[:, t : t + 1], fresh) for t in range(30, 40)], dim=1)
        assert report(f"{name} restore into fresh cache", resumed, uninterrupted) <= TOL
        # The snapshot is a copy: the cache going on does not change it.
        assert snap.seq_len == 30


def test_cache_works_across_inference_mode_and_no_grad(models, kernel_backend):
    model = models("v01_pattern")
    ids = tokens(model, 1, 12)
    with torch.no_grad():
        want = model(ids)
    with torch.inference_mode():
        cache = model.new_cache(1, 16)
        first = model(ids[:, :6], cache)
        snap = cache.snapshot()
    with torch.no_grad():  # a cache made in inference mode keeps working outside it
        rest = model(ids[:, 6:], cache)
        cache.restore(snap)
    with torch.inference_mode():
        again = model(ids[:, 6:], cache)
    assert report("inference_mode/no_grad mix", torch.cat([first, rest], 1), want) <= TOL
    assert torch.equal(again, rest)


def test_snapshot_from_another_model_or_batch_is_refused(models):
    jamba, llama = models("v01_pattern"), models("llama")
    snap = jamba.new_cache(1, 8).snapshot()
    with pytest.raises(ModelError, match="another model"):
        llama.new_cache(1, 8).restore(snap)
    with pytest.raises(ModelError, match="batch size"):
        jamba.new_cache(2, 8).restore(snap)
    big = jamba.new_cache(1, 16)
    jamba(tokens(jamba, 1, 12), big)
    with pytest.raises(ModelError, match="max_len"):
        jamba.new_cache(1, 8).restore(big.snapshot())


def test_too_long_prompt_raises_before_touching_the_cache(models, kernel_backend):
    model = models("v01_pattern")
    cache = model.new_cache(1, 16)
    with torch.no_grad():
        model(tokens(model, 1, 10), cache)
        before = cache.snapshot()
        with pytest.raises(ContextLengthError, match="max_len"):
            model(tokens(model, 1, 7), cache)
    after = cache.snapshot()
    assert cache.seq_len == 10
    for a, b in zip(before.layers, after.layers, strict=True):
        for x, y in zip(vars(a).values(), vars(b).values(), strict=True):
            assert torch.equal(x, y)
    with pytest.raises(ContextLengthError, match="context window"):
        model.new_cache(1, model.config.max_position_embeddings + 1)
    llama = models("llama")  # max_position_embeddings 512, no cache needed to exceed it
    with pytest.raises(ContextLengthError, match="context window"):
        llama(tokens(llama, 1, 513))


def test_bad_inputs_are_refused_with_clear_errors(models):
    model = models("awkward")
    ids = tokens(model, 2, 5)
    right_padded = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with pytest.raises(ValueError, match="LEFT padding"):
        model(ids, pad_mask=right_padded)
    with pytest.raises(ValueError, match="token ids"):
        model(torch.full((1, 3), model.config.vocab_size))
    with pytest.raises(ValueError, match="batch size"):
        model(ids, model.new_cache(3, 8))
    cache = model.new_cache(2, 16)
    model(ids, cache)
    with pytest.raises(ValueError, match="LEFT padding"):
        model(ids[:, :1], cache, pad_mask=torch.tensor([[True], [False]]))


@pytest.mark.parametrize("name", ["v01_pattern", "llama", "qwen2"])
def test_default_kernel_backend_matches_the_reference(name, models):
    """The whole model on the "auto" backend (C++ on this CPU when it builds) vs the references:
    prefill, chunked prefill and decode steps, so every dispatcher the model calls is covered
    (for Llama-family layers the decode steps run as one ``decoder_layer_decode`` op; qwen2
    adds q/k/v biases)."""
    from model import kernels

    model = models(name)
    ids = tokens(model, 2, 40)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {}
        for backend in ("ref", "auto"):
            with kernels.use(backend), torch.no_grad():
                print(backend, kernels.op_backends())
                cache = model.new_cache(2, 48)
                parts = [model(ids[:, :20], cache), model(ids[:, 20:33], cache)]
                parts += [model(ids[:, t : t + 1], cache) for t in range(33, 40)]
                results[backend] = torch.cat(parts, dim=1)
    finally:
        torch.set_num_threads(threads)
    assert report("auto vs ref backend", results["auto"], results["ref"]) <= TOL


@pytest.mark.parametrize("name", ["v01_pattern", "llama"])
def test_bf16_cache_paths_lose_no_more_than_a_bf16_forward(name, checkpoint_factory, models,
                                                          kernel_backend):
    """In bf16 the paths cannot agree bit for bit; what must hold is that step decoding and
    chunked prefill are no worse against the fp32 result than one bf16 forward is (the state
    is fp32 and the conv window holds inputs exactly, so nothing is rounded twice)."""
    exact_model = models(name)
    bf16 = load_hf_dir(checkpoint_factory(name).path, dtype=torch.bfloat16)
    ids = tokens(exact_model, 1, 48)
    with torch.no_grad():
        exact = exact_model(ids)
        scale = exact.abs().max()
        one = (bf16(ids) - exact).abs().max() / scale
        steps = (chunked(bf16, ids, 1) - exact).abs().max() / scale
        sevens = (chunked(bf16, ids, 7) - exact).abs().max() / scale
    print(f"{name} bf16 relative error: forward {one:.3e}, steps {steps:.3e}, chunks of 7 {sevens:.3e}")
    assert steps <= 2 * one and sevens <= 2 * one
