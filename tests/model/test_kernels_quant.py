"""int8 weight-only quantisation: per-weight error bound, layer exactness, whole-model logit error.

The model tests run on the tiny Jamba preset with perturbed random weights (so every layer
matters) on the C++ backend when it compiles, else the reference: both paths are checked.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from model import kernels
from model.config import LayerSpec, ModelConfig
from model.quant import (
    QuantExperts,
    QuantLinear,
    quantize_,
    quantize_int4,
    quantize_int8,
    weight_bytes,
)
from model.transformer import CausalLM


@pytest.fixture(params=["ref", "cpp"])
def backend(request):
    if request.param == "cpp":
        try:
            kernels.dispatch._registry["cpp"].load()
        except kernels.BackendUnavailable as exc:  # pragma: no cover - no compiler
            pytest.skip(f"C++ kernels unavailable here: {exc}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: a second OpenMP thread only adds spin time
    try:
        with kernels.use(request.param):
            yield request.param
    finally:
        torch.set_num_threads(threads)


def test_quantize_int8_error_is_at_most_half_a_step():
    w = torch.randn(33, 70) * torch.rand(33, 1) * 3
    w8, scale = quantize_int8(w)
    assert w8.dtype == torch.int8 and scale.shape == (33,)
    err = (w8.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-5)).all()
    assert w8.abs().max() == 127  # the largest weight of each row uses the full range


def test_quantize_int4_error_is_at_most_half_a_step():
    w = torch.randn(9, 96) * torch.rand(9, 1) * 3
    packed, scale, minimum = quantize_int4(w)
    assert packed.dtype == torch.uint8 and packed.shape == (9, 48) and scale.shape == (9, 3)
    assert kernels.unpack_int4(packed).max() == 15  # each group's max uses the top level
    step = scale.repeat_interleave(32, 1)
    err = (kernels.dequantize_int4(packed, scale, minimum) - w).abs()
    assert (err <= step / 2 + 1e-5).all()


def test_quantize_int4_reproduces_a_q4_1_grid():
    """Weights already on a Q4_1 grid (as a dequantised GGUF gives) re-quantise exactly."""
    g = torch.Generator().manual_seed(4)
    q = torch.randint(0, 16, (6, 64), generator=g)
    q[:, 0], q[:, 1], q[:, 32], q[:, 33] = 0, 15, 0, 15  # Q4_1 blocks span their full range
    d, m = torch.rand(6, 2, generator=g) * 0.1, torch.randn(6, 2, generator=g)
    w = q * d.repeat_interleave(32, 1) + m.repeat_interleave(32, 1)
    packed, scale, minimum = quantize_int4(w)
    torch.testing.assert_close(kernels.dequantize_int4(packed, scale, minimum), w)


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_linear_computes_with_its_dequantised_weight(backend, bits):
    linear = torch.nn.Linear(64, 21, bias=True)
    q = QuantLinear.from_linear(linear, bits)
    for rows in (1, 30):
        x = torch.randn(2, rows, 64)
        x_hat = kernels.quant_linear.quantize_activations(x)  # int8 per block of 32
        torch.testing.assert_close(q(x), F.linear(x_hat, q.dequantize(), linear.bias), rtol=1e-5, atol=1e-5)


def _perturbed_tiny_jamba(seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(ModelConfig.jamba_tiny()).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("A_log"):
                p.copy_(torch.log(1 + 15 * torch.rand(p.shape, generator=gen)))
            elif name.endswith(".D") or "norm" in name:
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("dt_proj.bias"):
                p.copy_(-2 + 0.5 * noise)
            elif p.dim() == 1 or "embed" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)
    return model


def _prefill_3_decode_3(model: CausalLM, ids: torch.Tensor) -> torch.Tensor:
    """Logits of three one-token decode steps after a 3-token prefill of ``ids`` (B, 6)."""
    with torch.inference_mode():
        cache = model.new_cache(ids.shape[0], 8)
        model(ids[:, :3], cache=cache)
        return torch.cat([model(ids[:, t : t + 1], cache=cache) for t in range(3, 6)], 1)


# Per-weight error <= scale/2, and activations rounded to int8 per block of 32, move the
# logits by a fraction of their spread. Measured on this 64-wide random model (logit std 1.0):
# int8 mean 0.045 / max 1.33, argmax agreement 0.94 (weights alone: mean 0.022 / max 0.20);
# int4 mean 0.32 / max 4.3, agreement 0.58 (4 bits are a lot of noise for 64-wide random
# layers; the real-model cost, SmolLM2 from its Q4_1 GGUF, is in the kernels report). Max
# errors come where top-2 experts flip. The int4 bounds only catch a broken path (which gives
# errors of several stds and ~1/256 agreement); its exactness is tested layer by layer.
# mode: (mean error bound, max error bound, min argmax agreement, max size ratio)
LOGIT_BOUNDS = {"int8": (0.08, 2.5, 0.9, 0.45), "int4": (0.5, 8.0, 0.3, 0.35)}


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_model_logit_error_is_bounded(backend, mode):
    mean_bound, max_bound, min_agree, max_size = LOGIT_BOUNDS[mode]
    model = _perturbed_tiny_jamba()
    quant = quantize_(copy.deepcopy(model), mode)
    assert any(isinstance(m, QuantExperts) for m in quant.modules())
    assert any(isinstance(m, QuantLinear) for m in quant.modules())
    assert weight_bytes(quant) < max_size * weight_bytes(model)
    ids = torch.randint(3, 256, (1, 48), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(ids)
        got = quant(ids)
    err = (got - ref).abs()
    spread = ref.std().item()
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"{mode} vs fp32 logits: max err {err.max():.4f}, mean err {err.mean():.4f}, "
          f"logit std {spread:.3f}, argmax agreement {agree:.3f}")
    assert err.mean().item() < mean_bound * spread
    assert err.max().item() < max_bound * spread
    assert agree >= min_agree


@pytest.mark.parametrize("mode", ["int8", "int4", "bf16"])
def test_quantized_model_decode_matches_its_full_forward(backend, mode):
    """The decode invariant on the quantised path: in_proj's strided layout, the fused Mamba
    step and the quantised experts all go through the cache exactly as the full forward does.

    8 tokens: up to 8 rows the quantised linears run the same matvec kernel as a decode step,
    row by row, so the activations are rounded to int8 identically. (Past 8 rows they take the
    dequantise + BLAS path, whose other summation order can move an activation across a .5
    rounding boundary; on this tiny random model one such flip shifts int4 logits by up to
    ~1e-3. That path is checked against the reference in test_kernels_cpu.py.)"""
    quant = quantize_(_perturbed_tiny_jamba(seed=2), mode)
    ids = torch.randint(3, 256, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        full = quant(ids)
        cache = quant.new_cache(1, 16)
        steps = [quant(ids[:, t : t + 1], cache=cache) for t in range(8)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_bf16_weights_compute_like_the_fp32_model_of_the_rounded_weights(backend):
    """quantize_(model, "bf16") stores the projection and expert weights in bf16 (half the
    bytes) and computes in fp32: its logits, prefill and decode, are those of the fp32 model
    whose weights were rounded to bf16, up to summation order. Embeddings, norms, the SSM
    parameters, x_proj/dt_proj and the router stay fp32."""
    model = _perturbed_tiny_jamba(seed=8).requires_grad_(False)
    rounded = copy.deepcopy(model)
    quant = quantize_(copy.deepcopy(model), "bf16")
    bf16_names = {n for n, p in quant.named_parameters() if p.dtype == torch.bfloat16}
    assert bf16_names and all(
        n.endswith(("_proj.weight", "lm_head.weight", "gate_proj", "up_proj", "down_proj"))
        and not n.endswith(("x_proj.weight", "dt_proj.weight")) for n in bf16_names
    )
    assert quant.dtype == torch.float32 and quant.lm_head.weight.dtype == torch.bfloat16
    for name in bf16_names:  # new parameters: a head tied to the embedding gets its own
        owner, _, attr = name.rpartition(".")
        module = rounded.get_submodule(owner)
        weight = getattr(module, attr).detach().bfloat16().float()
        setattr(module, attr, torch.nn.Parameter(weight, requires_grad=False))
    assert weight_bytes(quant) < 0.6 * weight_bytes(model)
    ids = torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        torch.testing.assert_close(quant(ids), rounded(ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_prefill_3_decode_3(quant, ids[:, :6]),
                               _prefill_3_decode_3(rounded, ids[:, :6]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["bf16", "int8", "int4"])
def test_narrow_weights_hand_the_mamba_kernels_time_contiguous_rows(mode, monkeypatch):
    """A prefill on bf16, int8 or 4-bit weights lays the Mamba in_proj's output out as the fp32
    one does, (B, ED, L) rows with unit stride along L: strided by 2ED instead, the CPU conv
    read it 8x slower (a 2048-token prefill of the 300M Jamba)."""
    strides: list[tuple[torch.dtype, int]] = []
    conv = kernels.causal_conv1d

    def recording(x, *args, **kwargs):
        strides.append((x.dtype, x.stride(-1)))
        return conv(x, *args, **kwargs)

    monkeypatch.setattr(kernels, "causal_conv1d", recording)
    model = _perturbed_tiny_jamba(seed=8).requires_grad_(False)
    quant = quantize_(copy.deepcopy(model), mode)
    ids = torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        quant(ids)
    assert strides and set(strides) == {(torch.float32, 1)}


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_mamba_in_proj_prefill_is_the_layers_own_product(backend, bits, monkeypatch):
    """The Mamba mixer runs a quantised in_proj's prefill as ``W @ x̂^T`` (to get the
    time-contiguous layout): the same product as the layer's forward, ``x̂ @ W^T``."""
    import model.mamba as mamba

    model = _perturbed_tiny_jamba(seed=5).requires_grad_(False)
    quant = quantize_(model, "int8" if bits == 8 else "int4")
    mixer = next(m for m in quant.modules() if isinstance(m, mamba.MambaMixer))
    assert isinstance(mixer.in_proj, QuantLinear) and mixer.in_proj.bits == bits
    h = torch.randn(2, 24, quant.config.hidden_size, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        own = mixer(h, None, None)
        monkeypatch.setattr(mamba, "_prefill_operands", lambda proj, h: None)
        through_forward = mixer(h, None, None)
    torch.testing.assert_close(own, through_forward, rtol=1e-5, atol=1e-5)


def test_quantize_rejects_unknown_mode_and_none_is_a_no_op():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="int8"):
        quantize_(model, "int3")
    assert isinstance(quantize_(model, "none")[0], torch.nn.Linear)


@pytest.mark.parametrize("mode", ["none", "int8", "int4", "bf16"])
def test_llama_decode_steps_as_one_op_per_layer(backend, mode, checkpoint_factory, monkeypatch):
    """On a Llama-family model, without the whole-step plan, a decode step runs each layer as one
    ``decoder_layer_decode`` op (fused q|k|v and gate|up, fp32, int8 or 4-bit weights). It must give what the layer's
    modules give one by one, and in fp32 continue the cache exactly as the full forward.

    (Quantised decode is compared with module-by-module decode, not with the full forward: an
    activation block rounded to int8 can land on the other side of a .5 when a batched matmul
    sums in another order, and on this tiny random model one such flip moves int4 logits by
    ~0.1.)"""
    from model.hf import load_hf_dir
    from model.transformer import Block

    monkeypatch.setattr(CausalLM, "_decode_plan", lambda self: None)  # the per-layer path
    model = quantize_(load_hf_dir(checkpoint_factory("llama").path), mode)
    ids = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(4))

    def decode() -> torch.Tensor:
        with torch.inference_mode():
            cache = model.new_cache(2, 16)
            steps = [model(ids[:, :4], cache=cache)]
            steps += [model(ids[:, t : t + 1], cache=cache) for t in range(4, 10)]
        return torch.cat(steps, 1)

    calls: list[int] = []
    real_op = kernels.decoder_layer_decode
    monkeypatch.setattr(kernels, "decoder_layer_decode", lambda *a: calls.append(1) or real_op(*a))
    one_op = decode()
    assert len(calls) == 6 * len(model.layers)  # every layer of every decode step
    monkeypatch.setattr(Block, "_decode_step", lambda self: None)
    modules = decode()
    torch.testing.assert_close(one_op, modules, rtol=1e-4, atol=1e-4)
    if mode in ("none", "bf16"):  # no activation rounding: the full forward's numbers
        with torch.inference_mode():
            torch.testing.assert_close(one_op, model(ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["none", "int8", "int4", "bf16"])
def test_jamba_decode_steps_as_fused_sublayer_ops(backend, mode, monkeypatch):
    """On the hybrid, without the whole-step plan, a decode step runs each Mamba mixer as one
    ``mamba_mixer_decode`` op, each
    MoE as one ``moe_decode`` op and the dense MLP of a Mamba layer as one ``mlp_decode`` op
    (the tiny Jamba has all three, plus an attention layer). It must
    give what the modules give one by one, with batch rows routed to different experts, and
    in fp32 continue the cache as the full forward does (to 1e-4)."""
    from model.transformer import Block

    monkeypatch.setattr(CausalLM, "_decode_plan", lambda self: None)  # the per-layer path
    model = quantize_(_perturbed_tiny_jamba(seed=6).requires_grad_(False), mode)
    ids = torch.randint(3, 256, (3, 9), generator=torch.Generator().manual_seed(7))
    mamba_layers = sum(b.spec.mixer == "mamba" for b in model.layers)
    moe_layers = sum(b.spec.ffn == "moe" for b in model.layers)
    mamba_mlp_layers = sum(b.spec == LayerSpec("mamba", "mlp") for b in model.layers)
    assert mamba_layers and moe_layers and mamba_mlp_layers

    def decode() -> torch.Tensor:
        with torch.inference_mode():
            cache = model.new_cache(3, 16)
            steps = [model(ids[:, :4], cache=cache)]
            steps += [model(ids[:, t : t + 1], cache=cache) for t in range(4, 9)]
        return torch.cat(steps, 1)

    calls = {"mamba_mixer_decode": 0, "moe_decode": 0, "mlp_decode": 0}
    routes: list[int] = []  # per MoE call, how many different expert sets its rows go to

    def route(h, norm, eps, router, top_k, *stacks):
        probs = torch.softmax(kernels.rms_norm_ref(h, norm, eps)[:, 0] @ router.t(), dim=-1)
        routes.append(len({tuple(sorted(r)) for r in probs.topk(top_k).indices.tolist()}))

    for name in calls:
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _n=name, _f=real: calls.update(
            {_n: calls[_n] + 1}) or (_n == "moe_decode" and route(*a)) or _f(*a))
    fused_ops = decode()
    assert calls == {"mamba_mixer_decode": 5 * mamba_layers, "moe_decode": 5 * moe_layers,
                     "mlp_decode": 5 * mamba_mlp_layers}
    assert max(routes) > 1
    monkeypatch.setattr(Block, "_mamba_step", lambda self: None)
    monkeypatch.setattr(Block, "_moe_step", lambda self: None)
    monkeypatch.setattr(Block, "_mlp_step", lambda self: None)
    modules = decode()
    if mode in ("none", "bf16"):  # no activation rounding: the full forward's numbers
        torch.testing.assert_close(fused_ops, modules, rtol=1e-4, atol=1e-4)
        with torch.inference_mode():
            torch.testing.assert_close(fused_ops, model(ids), rtol=1e-4, atol=1e-4)
    else:
        _assert_close_but_for_rounding_flips(fused_ops, modules)


def _assert_close_but_for_rounding_flips(got: torch.Tensor, want: torch.Tensor) -> None:
    """Logits of two paths that round activations to int8 per block, in sums of other orders:
    equal to 1e-4 except where a value ~1e-7 from a .5 boundary rounded the other way, which on
    the tiny random Jamba moves the logits of that position and the next by up to ~0.05 (the
    fused and per-module decodes of test_jamba_decode_steps_as_fused_sublayer_ops flipped once,
    at the last of 27 positions, after the Mamba prefill's in_proj became ``W @ x̂^T``). A broken
    path is off by ~1 logit std (1.0) nearly everywhere."""
    err = (got - want).abs()
    off = (err > 1e-4 + 1e-4 * want.abs()).any(dim=-1)  # (B, T) positions off
    assert err.max().item() < 0.1 and off.float().mean().item() <= 0.1, (
        f"max error {err.max().item():.3g}, {int(off.sum())} of {off.numel()} positions off"
    )


@pytest.mark.parametrize("family", ["llama", "jamba"])
@pytest.mark.parametrize("mode", ["none", "int8", "int4", "bf16"])
def test_decode_steps_as_one_plan(backend, family, mode, checkpoint_factory, monkeypatch):
    """With the C++ kernels a plain decode step is ONE ``DecodePlan.run`` over every layer, the
    final norm and the LM head: no layer runs through Python, and the logits and the cache it
    leaves are the per-layer ops' (which the tests above hold to the modules)."""
    from model.hf import load_hf_dir
    from model.transformer import Block

    if family == "llama":
        base = load_hf_dir(checkpoint_factory("llama").path)
    else:
        base = _perturbed_tiny_jamba(seed=16)
    model = quantize_(base.requires_grad_(False), mode)
    ids = torch.randint(3, 128, (3, 9), generator=torch.Generator().manual_seed(17))

    def decode() -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.inference_mode():
            cache = model.new_cache(3, 16)
            steps = [model(ids[:, :4], cache=cache)]
            steps += [model(ids[:, t : t + 1], cache=cache) for t in range(4, 9)]
        states = [t.clone() for layer in cache.layers for t in vars(layer).values()]
        return torch.cat(steps, 1), states

    layer_calls: list[int] = []
    real_decode = Block._decode
    monkeypatch.setattr(Block, "_decode", lambda *a: layer_calls.append(1) or real_decode(*a))
    plan_logits, plan_states = decode()
    if backend == "ref":  # no plan: every layer of every decode step ran on its own
        assert len(layer_calls) == 5 * len(model.layers)
        return
    assert layer_calls == []
    monkeypatch.setattr(CausalLM, "_decode_plan", lambda self: None)
    layer_logits, layer_states = decode()
    assert len(layer_calls) == 5 * len(model.layers)
    torch.testing.assert_close(plan_logits, layer_logits, rtol=1e-5, atol=1e-5)
    for plan_state, layer_state in zip(plan_states, layer_states, strict=True):
        torch.testing.assert_close(plan_state, layer_state, rtol=1e-5, atol=1e-5)


def test_decode_plan_follows_weights_changed_in_place(backend, monkeypatch):
    """The plan holds the weights, not copies: an in-place write (``load_state_dict``) to a
    weight, or to A_log, whose A = -exp(A_log) the plan keeps, shows in the next step."""
    model = _perturbed_tiny_jamba(seed=18).requires_grad_(False)
    ids = torch.randint(3, 256, (2, 6), generator=torch.Generator().manual_seed(19))

    def decode() -> torch.Tensor:
        return _prefill_3_decode_3(model, ids)

    before = decode()  # builds the plan
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in state:
        if key.endswith("A_log"):
            state[key] += 0.7
    state["layers.1.ffn.down_proj"] *= -1
    model.load_state_dict(state)
    after = decode()
    assert not torch.allclose(before, after, rtol=1e-3, atol=1e-3)
    monkeypatch.setattr(CausalLM, "_decode_plan", lambda self: None)
    torch.testing.assert_close(after, decode(), rtol=1e-5, atol=1e-5)


def test_decode_plan_checks_every_state_before_writing(backend):
    """A state of the wrong shape is refused, naming it, before any layer's state is written."""
    if backend == "ref":
        pytest.skip("the reference has no plan")
    model = _perturbed_tiny_jamba(seed=20).requires_grad_(False)
    with torch.inference_mode():
        cache = model.new_cache(1, 8)
        model(torch.tensor([[5, 6, 7]]), cache=cache)
        plan = model._decode_plan()
        assert plan is not None
        states = [t for layer in cache.layers for t in vars(layer).values()]
        before = [t.clone() for t in states]
        bad = list(states)
        bad[-1] = states[-1][:, :-1]  # the last Mamba layer's ssm state, one channel short
        h = model.embed_tokens(torch.tensor([[8]]))
        with pytest.raises(RuntimeError, match="ssm_state must be"):
            plan.run(h, bad, 3, None, None)
        for now, then in zip(states, before, strict=True):
            torch.testing.assert_close(now, then, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="expected 8 state tensors"):
            plan.run(h, states[:-1], 3, None, None)


def test_jamba_decode_ops_follow_replaced_weights(monkeypatch):
    """The fused decode ops' cached arguments follow a replaced expert stack (not only the
    first one) and a replaced Mamba parameter: decode after the swap equals the modules."""
    from model.transformer import Block

    model = _perturbed_tiny_jamba(seed=10).requires_grad_(False)
    ids = torch.randint(3, 256, (2, 6), generator=torch.Generator().manual_seed(11))

    def decode() -> torch.Tensor:
        return _prefill_3_decode_3(model, ids)

    decode()  # builds the cached arguments
    block = next(b for b in model.layers if b.spec.mixer == "mamba" and b.spec.ffn == "moe")
    block.ffn.up_proj = torch.nn.Parameter(block.ffn.up_proj * 1.5, requires_grad=False)
    block.mixer.D = torch.nn.Parameter(block.mixer.D * -1, requires_grad=False)
    fused_ops = decode()
    monkeypatch.setattr(Block, "_mamba_step", lambda self: None)
    monkeypatch.setattr(Block, "_moe_step", lambda self: None)
    torch.testing.assert_close(fused_ops, decode(), rtol=1e-4, atol=1e-4)


def test_cached_decode_args_are_rechecked_only_after_a_change(monkeypatch):
    """Steady decode steps reuse the cached sublayer arguments without looking at their parts
    again; converting the model's tensors (what ``.to()`` does, here scaling every weight)
    makes them re-checked and rebuilt, and decode then equals the modules on the new weights."""
    from model import layers
    from model.transformer import Block

    model = _perturbed_tiny_jamba(seed=14).requires_grad_(False)
    ids = torch.randint(3, 256, (2, 6), generator=torch.Generator().manual_seed(15))

    def decode() -> torch.Tensor:
        return _prefill_3_decode_3(model, ids)

    decode()  # builds the cached arguments
    checks: list[int] = []
    real = layers.same_identity
    monkeypatch.setattr(layers, "same_identity", lambda key, parts: checks.append(1) or real(key, parts))
    before = decode()
    assert checks == []
    model._apply(lambda t: t * 1.5 if t.is_floating_point() else t)
    fused_ops = decode()
    assert checks  # looked again, found the new tensors, rebuilt
    assert not torch.allclose(fused_ops, before)
    for name in ("_decode_step", "_mamba_step", "_moe_step"):
        monkeypatch.setattr(Block, name, lambda self: None)
    torch.testing.assert_close(fused_ops, decode(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "jamba"])
def test_a_half_precision_kv_cache_decodes_like_fp32(backend, family, checkpoint_factory):
    """``new_cache(kv_dtype=torch.float16)`` holds half the KV bytes; prefill and decode through
    it (the fused decode ops on the C++ backend) stay within fp16 rounding of the fp32 cache,
    and snapshots restore across the two."""
    from model.hf import load_hf_dir

    model = (load_hf_dir(checkpoint_factory("llama").path) if family == "llama"
             else _perturbed_tiny_jamba(seed=12).requires_grad_(False))
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(13))

    def decode(cache) -> torch.Tensor:
        with torch.inference_mode():
            steps = [model(ids[:, :6], cache=cache)]
            steps += [model(ids[:, t : t + 1], cache=cache) for t in range(6, 12)]
        return torch.cat(steps, 1)

    half = model.new_cache(2, 16, kv_dtype=torch.float16)
    full = model.new_cache(2, 16)
    kv = [s for s in half.layers if hasattr(s, "k")]
    assert kv and all(s.k.dtype == s.v.dtype == torch.float16 for s in kv)
    assert half.bytes_per_token() * 2 == full.bytes_per_token()
    out_half, out_full = decode(half), decode(full)
    torch.testing.assert_close(out_half, out_full, rtol=0, atol=2e-2)
    assert (out_half.argmax(-1) == out_full.argmax(-1)).float().mean() > 0.9
    full.restore(half.snapshot())  # fp16 K/V widened into the fp32 cache
    with torch.inference_mode():
        torch.testing.assert_close(model(ids[:, 11:], cache=full), model(ids[:, 11:], cache=half),
                                   rtol=0, atol=2e-2)
    with pytest.raises(ValueError, match="floating-point"):
        model.new_cache(1, 8, kv_dtype=torch.int8)


def test_fused_projections_share_memory_and_follow_quantisation(checkpoint_factory):
    """q|k|v and gate|up are fused on first use without doubling memory (the projections' weights
    become views of the fused tensor), and quantising afterwards rebuilds the fused modules:
    the result equals quantising before any forward."""
    from model.hf import load_hf_dir
    from model.layers import fused

    path = checkpoint_factory("llama").path
    model, fresh = load_hf_dir(path), load_hf_dir(path)
    before = weight_bytes(model)
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(5))

    def prefill_and_step(m):
        cache = m.new_cache(1, 8)
        return torch.cat([m(ids[:, :5], cache), m(ids[:, 5:], cache)], 1)  # the last: one op a layer

    with torch.inference_mode():
        prefill_and_step(model)
    attn = model.layers[0].mixer
    qkv = fused(attn, ("q_proj", "k_proj", "v_proj"))
    assert qkv is not None and qkv.out_features == sum(
        getattr(attn, n).out_features for n in ("q_proj", "k_proj", "v_proj")
    )
    assert attn.q_proj.weight.data_ptr() == qkv.weight.data_ptr()
    assert attn.k_proj.weight.untyped_storage().data_ptr() == qkv.weight.untyped_storage().data_ptr()
    assert weight_bytes(model) == before  # views, no second copy
    assert fused(attn, ("q_proj", "k_proj", "v_proj")) is qkv  # built once

    fused_weight = weakref.ref(qkv.weight)
    del qkv
    quantize_(model, "int8")
    gc.collect()
    assert fused_weight() is None  # the fp32 fused weight is released by quantize_ itself
    quantize_(fresh, "int8")
    with torch.inference_mode():
        torch.testing.assert_close(prefill_and_step(model), prefill_and_step(fresh))
    qkv8 = fused(attn, ("q_proj", "k_proj", "v_proj"))
    assert isinstance(qkv8, QuantLinear)

    # a weight replaced by assignment (as a loader does) is picked up, not served stale
    mlp = model.layers[0].ffn
    mlp.gate_proj = QuantLinear(torch.nn.Linear(64, 128, bias=False), 8)
    assert fused(mlp, ("gate_proj", "up_proj")).qweight[:128].data_ptr() == mlp.gate_proj.qweight.data_ptr()


def test_projections_that_need_gradients_are_not_fused():
    from model.layers import Linear, fused

    owner = torch.nn.Module()
    owner.a, owner.b = Linear(8, 4), Linear(8, 6)  # requires_grad=True by default
    assert fused(owner, ("a", "b")) is None
    for p in owner.parameters():
        p.requires_grad_(False)
    both = fused(owner, ("a", "b"))
    x = torch.randn(3, 8)
    torch.testing.assert_close(both(x), torch.cat([owner.a(x), owner.b(x)], -1))


def test_fused_projections_follow_a_dtype_change_after_use(checkpoint_factory):
    """``model.to(dtype)`` swaps each parameter's data in place (same Parameter objects): the
    fused q|k|v and gate|up and the decode op's cached arguments must follow, not keep serving
    the old fp32 copies."""
    from model.hf import load_hf_dir

    path = checkpoint_factory("llama").path
    model, fresh = load_hf_dir(path), load_hf_dir(path).to(torch.bfloat16)
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(6))

    def prefill_and_step(m):
        cache = m.new_cache(1, 8)
        return torch.cat([m(ids[:, :5], cache), m(ids[:, 5:], cache)], 1)

    with torch.inference_mode():
        prefill_and_step(model)  # fuses, caches the decode op's arguments
        model.to(torch.bfloat16)
        torch.testing.assert_close(prefill_and_step(model), prefill_and_step(fresh))
        model.float()  # back on the fp32 decode op, with the bf16-rounded weights
        torch.testing.assert_close(prefill_and_step(model), prefill_and_step(fresh.float()))
