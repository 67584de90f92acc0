"""The decode step a CUDA graph records (``CausalLM._decode_at_slot``, see model/cuda_graph.py).

On the CPU (always run): that step, with its cache slot as a tensor and attention over every
slot under a mask, gives the logits and states of the plain decode step, on every tiny model
family (MoE, GQA, RoPE variants, a sliding window) and for a left-padded batch; the MoE's
on-device routing equals the grouped path.

On a GPU (``gpu``, skipped without CUDA): decoding through the recorded graph equals decoding
with ``model.cuda_graphs = False``, the graph is recorded once, and again after the weights
were replaced, ``A_log`` written in place or the kernel backend switched; a restored snapshot
continues correctly.
"""

from __future__ import annotations

import pytest
import torch

from model import kernels
from model.cache import HybridCache
from model.hf import load_hf_dir
from model.transformer import CausalLM
from tests.model.conftest import JAMBA_CONFIGS

NAMES = [*JAMBA_CONFIGS, "llama", "llama3_rope", "mistral_window", "qwen2"]
TOL = 1e-4


def _tokens(model: CausalLM, batch: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=gen)


def _slot_step(model: CausalLM, cache: HybridCache, ids: torch.Tensor) -> torch.Tensor:
    """What ``DecodeGraph.step`` runs around the recorded step, eagerly."""
    slot = torch.tensor([cache.seq_len], device=ids.device)
    cache._write_mask(None, 1)
    logits = model._decode_at_slot(ids, cache, slot)
    cache._advance(None, 1)
    return logits


def _prefill_padded(model: CausalLM, lengths: list[int], max_len: int) -> HybridCache:
    longest = max(lengths)
    ids = torch.zeros(len(lengths), longest, dtype=torch.long)
    pad = torch.zeros(len(lengths), longest, dtype=torch.bool)
    for row, n in enumerate(lengths):
        ids[row, longest - n :] = _tokens(model, 1, n, seed=10 + row)[0]
        pad[row, longest - n :] = True
    cache = model.new_cache(len(lengths), max_len)
    model(ids, cache, pad_mask=pad if len(set(lengths)) > 1 else None)
    return cache


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lengths", [[13], [13, 5, 9]], ids=["one", "left_padded"])
def test_step_at_a_slot_equals_the_plain_step(name, lengths, checkpoint_factory, kernel_backend):
    model = load_hf_dir(checkpoint_factory(name).path)
    steps = 12  # past mistral_window's window of 8
    follow = _tokens(model, len(lengths), steps, seed=99)
    with torch.no_grad():
        plain_cache = _prefill_padded(model, lengths, 40)
        slot_cache = _prefill_padded(model, lengths, 40)
        for t in range(steps):
            want = model(follow[:, t : t + 1], plain_cache)
            got = _slot_step(model, slot_cache, follow[:, t : t + 1])
            err = (got - want).abs().max().item()
            assert err <= TOL, f"{name} step {t}: max logit error {err:.3e}"
    assert slot_cache.seq_len == plain_cache.seq_len
    assert torch.equal(slot_cache.num_real, plain_cache.num_real)
    for a, b in zip(slot_cache.layers, plain_cache.layers, strict=True):
        for x, y in zip(vars(a).values(), vars(b).values(), strict=True):
            assert (x.float() - y.float()).abs().max().item() <= TOL


def _prefilled_twice(model: CausalLM, ids: torch.Tensor, max_len: int) -> list[HybridCache]:
    caches = [model.new_cache(ids.shape[0], max_len) for _ in range(2)]
    for cache in caches:
        model(ids, cache)
    return caches


def test_graph_first_step_runs_eagerly_and_advances_the_cache(checkpoint_factory, kernel_backend):
    """The bookkeeping around the recorded step (token buffer, slot, pad mask, advance), on the
    CPU where DecodeGraph's first, eager step runs as on a GPU."""
    from model.cuda_graph import DecodeGraph

    model = load_hf_dir(checkpoint_factory("llama").path)
    ids = _tokens(model, 2, 9, seed=4)
    with torch.no_grad():
        plain, graphed = _prefilled_twice(model, ids[:, :8], 16)
        want = model(ids[:, 8:], plain)
        got = DecodeGraph(model, graphed).step(ids[:, 8:])
    assert (got - want).abs().max().item() <= TOL
    assert graphed.seq_len == 9 and graphed.num_real.tolist() == [9, 9]


def test_a_step_that_cannot_be_recorded_runs_eagerly(checkpoint_factory, kernel_backend,
                                                    monkeypatch, caplog):
    """Recording fails (here: no CUDA; on a GPU, a layer that syncs with the host): the cache
    goes on decoding eagerly, correctly, with one warning, and does not retry every step."""
    from model.cuda_graph import DecodeGraph

    tries = []

    def refuse() -> None:
        tries.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", refuse)
    model = load_hf_dir(checkpoint_factory("v01_pattern").path)
    ids = _tokens(model, 1, 12, seed=5)
    with torch.no_grad():
        plain, graphed = _prefilled_twice(model, ids[:, :8], 16)
        graph = DecodeGraph(model, graphed)
        for t in range(8, 12):
            want = model(ids[:, t : t + 1], plain)
            assert (graph.step(ids[:, t : t + 1]) - want).abs().max().item() <= TOL
    assert len(tries) == 1 and graph.graph is None and "stream is capturing" in graph.failed
    assert graphed.seq_len == 12
    assert sum("without a CUDA graph" in r.getMessage() for r in caplog.records) == 1


def test_a_cache_and_its_graph_are_freed_without_the_cycle_collector(checkpoint_factory):
    """The graph lives on the cache; a cycle back would keep a finished cache's (GPU) buffers
    until the cycle collector ran."""
    import gc
    import weakref

    from model.cuda_graph import DecodeGraph

    model = load_hf_dir(checkpoint_factory("v01_pattern").path)
    cache = model.new_cache(1, 8)
    cache.decode_graph = DecodeGraph(model, cache)
    gone = weakref.ref(cache)
    gc.disable()
    try:
        del cache
        assert gone() is None
    finally:
        gc.enable()


def test_moe_routing_on_the_device_equals_the_grouped_path(checkpoint_factory, kernel_backend):
    model = load_hf_dir(checkpoint_factory("v01_pattern").path)
    moe = next(b.ffn for b in model.layers if b.spec.ffn == "moe")
    x = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        probs = torch.softmax(moe.router(x).float(), dim=-1)
        weights, experts = torch.topk(probs, moe.top_k, dim=-1)
        got = moe._routed_on_device(x, weights, experts)
        want = moe(x)  # on the CPU: the grouped path
    assert (got - want).abs().max().item() <= 1e-5


def test_expert_linear_reference_is_the_routed_matvec():
    from model import kernels

    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(4, 6, 5, generator=gen)
    x = torch.randn(3, 5, generator=gen)
    experts = torch.tensor([2, 0, 2])
    want = torch.stack([weights[e] @ x[s] for s, e in enumerate(experts.tolist())])
    assert torch.allclose(kernels.expert_linear_ref(x, weights, experts), want, atol=1e-6)
    assert torch.allclose(kernels.expert_linear(x, weights, experts), want, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# On a GPU: the recorded graph.


def _decode(model: CausalLM, ids: torch.Tensor, follow: torch.Tensor, max_len: int,
            graphs: bool) -> tuple[torch.Tensor, HybridCache]:
    model.cuda_graphs = graphs
    try:
        cache = model.new_cache(ids.shape[0], max_len)
        outs = [model(ids, cache)[:, -1:]]
        outs += [model(follow[:, t : t + 1], cache) for t in range(follow.shape[1])]
    finally:
        model.cuda_graphs = True
    return torch.cat(outs, dim=1), cache


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["v01_pattern", "llama", "mistral_window"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_graph_decode_equals_eager(name, dtype, checkpoint_factory):
    """fp32: graph == eager. bf16: the graph attends over every slot under a mask (SDPA's
    memory-efficient kernel) where eager attends over the used slice (flash), so the roundings
    differ; the graph's error against fp32 may be at most twice eager's (flash-attention's rule)."""
    path = checkpoint_factory(name).path
    model = load_hf_dir(path, dtype=dtype, device="cuda")
    ids = _tokens(model, 2, 20, seed=1).cuda()
    follow = _tokens(model, 2, 16, seed=2).cuda()
    with torch.no_grad():
        eager, _ = _decode(model, ids, follow, 48, graphs=False)
        graphed, cache = _decode(model, ids, follow, 48, graphs=True)
        exact = eager
        if dtype != torch.float32:
            exact, _ = _decode(load_hf_dir(path, device="cuda"), ids, follow, 48, graphs=False)
    graph = cache.decode_graph
    assert graph is not None and graph.recordings == 1, "recorded once, replayed after"
    err = (graphed - exact).abs().max().item()
    eager_err = (eager - exact).abs().max().item()
    print(f"{name} {dtype}: graph max logit error {err:.3e}, eager {eager_err:.3e}")
    assert err <= 2 * eager_err + TOL


@pytest.mark.gpu
def test_gpu_graph_is_recorded_again_after_weights_change(checkpoint_factory):
    model = load_hf_dir(checkpoint_factory("v01_pattern").path, device="cuda")
    ids = _tokens(model, 1, 10, seed=1).cuda()
    follow = _tokens(model, 1, 6, seed=2).cuda()
    with torch.no_grad():
        cache = model.new_cache(1, 32)
        model(ids, cache)
        for t in range(3):
            model(follow[:, t : t + 1], cache)
        graph = cache.decode_graph
        assert graph.recordings == 1
        snap = cache.snapshot()
        mixer = next(b.mixer for b in model.layers if b.spec.mixer == "mamba")
        mixer.A_log.mul_(0.5)  # in place: the graph's cached A is stale
        graphed = torch.cat([model(follow[:, t : t + 1], cache) for t in range(3, 6)], dim=1)
        assert graph.recordings == 2
        cache.restore(snap)  # the same buffers: the graph stays valid
        model.cuda_graphs = False
        try:
            eager = torch.cat([model(follow[:, t : t + 1], cache) for t in range(3, 6)], dim=1)
        finally:
            model.cuda_graphs = True
    assert (graphed - eager).abs().max().item() <= TOL
    mixer.D = torch.nn.Parameter(mixer.D.detach().clone())  # a replaced weight: new address
    with torch.no_grad():
        model(follow[:, :1], cache)
        assert graph.recordings == 3
        with kernels.use("ref"):  # another backend: the Triton launches must not replay
            model(follow[:, 1:2], cache)
            assert graph.recordings == 4
