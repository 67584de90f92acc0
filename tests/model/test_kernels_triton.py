"""Triton kernels against the fp32 references.

Two kinds of test:

- ``triton`` (always run, no GPU needed):
  * every kernel under ``TRITON_INTERPRET=1`` on the CPU with tiny shapes (Bt <= 2, ED <= 16,
    N <= 8, L <= 40, K = 4, lengths that are not a multiple of the block), fp32 / bf16 / fp16
    inputs, contiguous and the Mamba mixer's strided layouts, chunked prefill == one prefill,
    L decode steps == one scan, the fused decode step, the backend's custom ops (values and
    ``torch.library.opcheck``), a tiny Jamba ``CausalLM`` prefill + decode on the backend, and a
    smoke run of the benchmark script. The interpreter must be switched on before Triton is
    imported, so all cases run in ONE subprocess per module (``python -m
    tests.model.test_kernels_triton``) that prints a JSON line of errors; each pytest test then
    prints its case's max/mean error and asserts it. Nothing leaks into other tests' processes.
  * every kernel compiled offline for sm_90 at real sizes (what the interpreter cannot see:
    Triton's type rules, register spills).
- ``gpu`` (skipped without CUDA): the same comparisons compiled for a real GPU at real sizes
  (ED = 2048, N = 16, L = 2048; fp32 / bf16 / fp16), and offsets past int32.

Tolerance (flash-attention's rule, see CONVENTIONS.md): the kernel's error against the fp32
reference may be at most twice the error of the reference itself run on the low-precision
inputs (its output rounded to the input dtype) plus a small fp32 allowance for reordered sums.
One interpreter artefact: Triton 3.x's interpreter converts fp32 to bf16 by TRUNCATION
(``create_fp_trunc`` in triton/runtime/interpreter.py passes no rounding mode), while a GPU
rounds to nearest. Under the interpreter the bf16 "reference in low precision" is therefore the
fp32 reference truncated to bf16, the rounding this platform does; the GPU tests keep the
round-to-nearest reference.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from model.kernels import (
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    expert_linear_ref,
    mamba_decode_step_ref,
    rms_norm_ref,
    selective_scan_ref,
    selective_state_update_ref,
)

ROOT = Path(__file__).resolve().parents[2]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WIDTH_TINY = 4  # conv width (d_conv) of the decode-step case

# ---------------------------------------------------------------------------------------------
# Inputs and comparisons, shared by the interpreter cases and the GPU tests.


def _gen(seed: int, device: str) -> Callable[..., torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device)

    return r


def _scan_args(batch, channels, n_state, length, dtype, device="cpu", seed=0, full=True,
               strided=False) -> dict[str, Any]:
    """Inputs for selective_scan. ``strided``: the Mamba mixer's layout: u and z are halves of a
    transposed (Bt, L, 2ED) in_proj output (ED contiguous) and B, C transposed slices of one
    (Bt, L, R+2N) x_proj output."""
    r = _gen(seed, device)
    if strided:
        xz = r(batch, length, 2 * channels).to(dtype).transpose(1, 2)
        u, z = xz.chunk(2, dim=1)
        x_dbl = r(batch, length, 3 + 2 * n_state).to(dtype)  # dt_rank 3
        B = x_dbl[..., 3 : 3 + n_state].transpose(1, 2)
        C = x_dbl[..., 3 + n_state :].transpose(1, 2)
    else:
        u, z = r(batch, channels, length).to(dtype), r(batch, channels, length).to(dtype)
        B, C = r(batch, n_state, length).to(dtype), r(batch, n_state, length).to(dtype)
    args = dict(
        u=u, delta=r(batch, channels, length, scale=0.5).to(dtype),
        A=-torch.exp(r(channels, n_state, scale=0.5)), B=B, C=C,
    )
    if not full:  # no softplus: keep dt > 0 (a valid step) so the state decays
        args["delta"] = args["delta"].abs()
    else:
        args.update(
            D=r(channels), z=z, delta_bias=r(channels, scale=0.1), delta_softplus=True,
            initial_state=r(batch, channels, n_state),
        )
    return args


def _upcast(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in args.items()}


def _truncate_to_bf16(t: torch.Tensor) -> torch.Tensor:
    bits = t.float().contiguous().view(torch.int32) & ~0xFFFF  # drop the low 16 mantissa bits
    return bits.view(torch.float32)


def _errors(got: torch.Tensor, ref32: torch.Tensor, ref_low: torch.Tensor | None,
            rel: float = 2e-5) -> dict[str, float]:
    """max/mean error of ``got`` against the fp32 reference and the allowed max error."""
    if ref_low is not None and ref_low.dtype == torch.float32:
        ref_low = None  # fp32 inputs: the reference IS the fp32 reference, it has no error
    if INTERPRETED and ref_low is not None and ref_low.dtype == torch.bfloat16:
        ref_low = _truncate_to_bf16(ref32)  # see the module docstring
    diff = (got.float() - ref32).abs()
    scale = float(ref32.abs().max()) if ref32.numel() else 0.0
    ref_err = float((ref_low.float() - ref32).abs().max()) if ref_low is not None and ref32.numel() else 0.0
    return {
        "max": float(diff.max()) if diff.numel() else 0.0,
        "mean": float(diff.mean()) if diff.numel() else 0.0,
        "ref_err": ref_err,
        "tol": 2.0 * ref_err + rel * (1.0 + scale),
    }


def check_scan(fn, batch, channels, n_state, length, dtype, device="cpu", **kw) -> dict[str, Any]:
    args = _scan_args(batch, channels, n_state, length, dtype, device, **kw)
    y, h = fn(**args)
    if args["u"].shape[1] > 1 and args["u"].shape[2] > 1:  # y is stored like u (ED-contiguous)
        assert (y.stride(1) == 1) == (args["u"].stride(1) == 1), (y.stride(), args["u"].stride())
    y_low, _ = selective_scan_ref(**args)  # fp32 math on the low-precision inputs, y rounded
    y32, h32 = selective_scan_ref(**_upcast(args))
    assert y.dtype == args["u"].dtype and y.shape == y32.shape, (y.dtype, y.shape)
    assert h.dtype == torch.float32 and h.shape == h32.shape, (h.dtype, h.shape)
    return {"y": _errors(y, y32, y_low), "final_state": _errors(h, h32, None)}


def check_scan_chunked(fn, batch, channels, n_state, length, split, dtype, device="cpu"):
    """A prefill in two calls (the second starting from the first's final state) == one call."""
    args = _scan_args(batch, channels, n_state, length, dtype, device, seed=1)
    seq = ("u", "delta", "B", "C", "z")
    first = {k: (v[..., :split] if k in seq else v) for k, v in args.items()}
    second = {k: (v[..., split:] if k in seq else v) for k, v in args.items()}
    y1, h1 = fn(**first)
    y2, h2 = fn(**{**second, "initial_state": h1})
    y_low, _ = selective_scan_ref(**args)
    y32, h32 = selective_scan_ref(**_upcast(args))
    return {"y": _errors(torch.cat([y1, y2], -1), y32, y_low), "final_state": _errors(h2, h32, None)}


def _step_args(batch, channels, n_state, dtype, device="cpu", seed=0, cache_view=False):
    r = _gen(seed, device)
    # cache_view: one slot of a (Bt, 2, ED, N) buffer, a view with an offset and a batch stride
    state = r(batch, 2, channels, n_state)[:, 1] if cache_view else r(batch, channels, n_state)
    return dict(
        state=state, x=r(batch, channels).to(dtype), dt=r(batch, channels, scale=0.5).to(dtype),
        A=-torch.exp(r(channels, n_state, scale=0.5)), B=r(batch, n_state).to(dtype),
        C=r(batch, n_state).to(dtype), D=r(channels), z=r(batch, channels).to(dtype),
        dt_bias=r(channels, scale=0.1), dt_softplus=True,
    )


def check_state_update(fn, batch, channels, n_state, dtype, device="cpu", cache_view=False):
    args = _step_args(batch, channels, n_state, dtype, device, cache_view=cache_view)
    ref_low_args = {**args, "state": args["state"].clone()}
    ref32_args = {**_upcast(args), "state": args["state"].clone()}
    y = fn(**args)
    y_low = selective_state_update_ref(**ref_low_args)
    y32 = selective_state_update_ref(**ref32_args)
    assert y.dtype == args["x"].dtype
    return {"y": _errors(y, y32, y_low), "state": _errors(args["state"], ref32_args["state"], None)}


def check_scan_equals_steps(scan_fn, step_fn, batch, channels, n_state, length, device="cpu"):
    """The decode invariant at kernel level: L decode steps == one scan over L."""
    args = _scan_args(batch, channels, n_state, length, torch.float32, device, seed=2)
    y_scan, h_scan = scan_fn(**args)
    state = args["initial_state"].clone()
    ys = [
        step_fn(state, args["u"][..., t], args["delta"][..., t], args["A"], args["B"][..., t],
                args["C"][..., t], args["D"], args["z"][..., t], args["delta_bias"], True)
        for t in range(length)
    ]
    return {"y": _errors(torch.stack(ys, -1), y_scan, None), "state": _errors(state, h_scan, None)}


def _conv_args(batch, channels, length, width, dtype, device="cpu", seed=0, full=True,
               strided=False, model_layout=False):
    """``strided``: x is a channel slice of a contiguous (Bt, 2ED, L); ``model_layout``: x is
    the first half of a transposed (Bt, L, 2ED) in_proj output (ED contiguous)."""
    r = _gen(seed, device)
    if model_layout:
        x = r(batch, length, 2 * channels).to(dtype).transpose(1, 2)[:, :channels]
    elif strided:
        x = r(batch, 2 * channels, length).to(dtype)[:, :channels]
    else:
        x = r(batch, channels, length).to(dtype)
    args = dict(x=x, weight=r(channels, width).to(dtype))
    if full:
        args.update(bias=r(channels).to(dtype), initial_state=r(batch, channels, width - 1).to(dtype),
                    activation="silu")
    else:
        args.update(activation=None)
    return args


def check_conv(fn, batch, channels, length, width, dtype, device="cpu", **kw):
    args = _conv_args(batch, channels, length, width, dtype, device, **kw)
    y, s = fn(**args)
    if args["x"].shape[1] > 1 and args["x"].shape[2] > 1:  # y is stored like x
        assert (y.stride(1) == 1) == (args["x"].stride(1) == 1), (y.stride(), args["x"].stride())
    y_low, s_low = causal_conv1d_ref(**args)
    y32, s32 = causal_conv1d_ref(**_upcast(args))
    assert y.dtype == args["x"].dtype and s.dtype == args["x"].dtype
    assert s.shape == s32.shape, (s.shape, s32.shape)
    return {"y": _errors(y, y32, y_low), "final_state": _errors(s, s32, s_low)}


def check_conv_chunked(fn, step_fn, batch, channels, length, split, width, device="cpu"):
    """conv(x[:split]) then conv(x[split:], its state) then 3 update steps == one conv."""
    args = _conv_args(batch, channels, length + 3, width, torch.float32, device, seed=1)
    x = args.pop("x")
    y1, s1 = fn(x[..., :split], **args)
    y2, s2 = fn(x[..., split:length], **{**args, "initial_state": s1})
    ys = [y1, y2]
    state = s2.clone()
    for t in range(length, length + 3):
        ys.append(step_fn(x[..., t], state, args["weight"], args["bias"], "silu")[..., None])
    y32, s32 = causal_conv1d_ref(x, **args)
    return {"y": _errors(torch.cat(ys, -1), y32, None), "state": _errors(state, s32, None)}


def check_conv_update(fn, batch, channels, width, state_len, dtype, device="cpu"):
    r = _gen(3, device)
    x, w, b = r(batch, channels).to(dtype), r(channels, width).to(dtype), r(channels).to(dtype)
    state = r(batch, channels, state_len).to(dtype)
    low, s32 = state.clone(), state.float().clone()
    y = fn(x, state, w, b, "silu")
    y_low = causal_conv1d_update_ref(x, low, w, b, "silu")
    y32 = causal_conv1d_update_ref(x.float(), s32, w.float(), b.float(), "silu")
    return {"y": _errors(y, y32, y_low), "state": _errors(state, s32, None)}


def check_mamba_decode_step(fn, batch, channels, n_state, rank, dtype, steps=3, device="cpu",
                            bare=False):
    """The backend's whole-mixer decode step vs the reference over a few tokens (states carried).
    ``bare``: no conv/dt biases, no RMSNorms, no D, no gate (plain Mamba-1 minus the options)."""
    r = _gen(4, device)
    weights = dict(
        conv_weight=r(channels, WIDTH_TINY).to(dtype), conv_bias=r(channels).to(dtype),
        x_proj_weight=r(rank + 2 * n_state, channels, scale=0.3).to(dtype),
        dt_proj_weight=r(channels, rank, scale=0.3).to(dtype),
        dt_proj_bias=r(channels, scale=0.1).to(dtype), A=-torch.exp(r(channels, n_state)),
        D=r(channels), dt_norm_weight=r(rank).to(dtype), b_norm_weight=r(n_state).to(dtype),
        c_norm_weight=r(n_state).to(dtype),
    )
    if bare:
        weights.update(conv_bias=None, dt_proj_bias=None, D=None, dt_norm_weight=None,
                       b_norm_weight=None, c_norm_weight=None)
    xs, zs = r(steps, batch, channels).to(dtype), r(steps, batch, channels).to(dtype)
    conv0, ssm0 = r(batch, channels, WIDTH_TINY - 1).to(dtype), r(batch, channels, n_state)
    states = {"ours": (conv0.clone(), ssm0.clone()), "low": (conv0.clone(), ssm0.clone()),
              "32": (conv0.float().clone(), ssm0.clone())}
    ys: dict[str, list[torch.Tensor]] = {k: [] for k in states}
    for t in range(steps):
        for key, (conv, ssm) in states.items():
            w = _upcast(weights) if key == "32" else weights
            x, z = (xs[t].float(), zs[t].float()) if key == "32" else (xs[t], zs[t])
            z = None if bare else z
            step = fn if key == "ours" else mamba_decode_step_ref
            ys[key].append(step(x, z, conv, ssm, **w))
    stacked = {k: torch.stack(v, -1) for k, v in ys.items()}
    return {"y": _errors(stacked["ours"], stacked["32"], stacked["low"]),
            "conv_state": _errors(states["ours"][0], states["32"][0], None),
            "ssm_state": _errors(states["ours"][1], states["32"][1], None)}


def check_expert_linear(fn, slots, n_experts, n_out, n_in, dtype, device="cpu") -> dict[str, Any]:
    """The routed-expert matvec of an MoE decode step; a repeated expert included."""
    gen = torch.Generator().manual_seed(5)
    weights = (torch.randn(n_experts, n_out, n_in, generator=gen) / n_in**0.5).to(device, dtype)
    x = torch.randn(slots, n_in, generator=gen).to(device, dtype)
    experts = torch.randint(0, n_experts, (slots,), generator=gen)
    experts[-1] = experts[0]
    experts = experts.to(device)
    y = fn(x, weights, experts)
    assert y.dtype == dtype and y.shape == (slots, n_out), (y.dtype, y.shape)
    y_low = expert_linear_ref(x, weights, experts)
    y32 = expert_linear_ref(x.float(), weights.float(), experts)
    return {"y": _errors(y, y32, y_low)}


def check_rms_norm(fn, shape, dtype, device="cpu", strided=False) -> dict[str, Any]:
    """RMSNorm over the last dim; ``strided``: rows of a split view (the mixer's dt / B / C)."""
    gen = torch.Generator().manual_seed(6)
    width = shape[-1]
    full = torch.randn(*shape[:-1], width + (5 if strided else 0), generator=gen) * 3
    x = full.to(device, dtype)[..., :width]
    weight = (torch.rand(width, generator=gen) + 0.5).to(device, dtype)
    y = fn(x, weight, 1e-6)
    assert y.dtype == dtype and y.shape == x.shape, (y.dtype, y.shape)
    y_low = rms_norm_ref(x, weight, 1e-6)
    y32 = rms_norm_ref(x.float(), weight.float(), 1e-6)
    # Both the reference and the kernel round twice (the normalised row, then the product);
    # _errors' low-precision reference rounds once: allow one more unit in the last place.
    ulp = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}.get(dtype, 2e-5)
    return {"y": _errors(y, y32, y_low, rel=ulp)}


def check_custom_ops_opcheck() -> dict[str, Any]:
    """torch.library.opcheck on the backend's custom ops: schema, declared mutations, fake
    kernels (incl. output strides: channel-major inputs give channel-major outputs) and AOT
    dispatch, i.e. what ``torch.compile`` relies on. Raises on failure."""
    ops = torch.ops.model_triton
    a = _scan_args(1, 4, 4, 5, torch.float32)
    m = _scan_args(1, 4, 4, 5, torch.float32, strided=True)  # channel-major output layout
    s = _step_args(1, 4, 4, torch.float32)
    c = _conv_args(1, 4, 5, 4, torch.float32)
    cm = _conv_args(1, 4, 5, 4, torch.float32, model_layout=True)
    calls = [
        ("selective_scan", (a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"],
                            a["delta_bias"], True, a["initial_state"])),
        ("selective_scan", (m["u"], m["delta"], m["A"], m["B"], m["C"], None, m["z"], None,
                            False, None)),
        ("selective_state_update", tuple(s.values())),
        ("causal_conv1d", (c["x"], c["weight"], c["bias"], c["initial_state"], True)),
        ("causal_conv1d", (cm["x"], cm["weight"], None, None, False)),
        ("causal_conv1d_update", (c["x"][..., 0].contiguous(), c["initial_state"].clone(),
                                  c["weight"], c["bias"], True)),
        ("mamba_decode_step", (
            s["x"], s["z"], c["initial_state"][..., :3].clone(), s["state"].clone(), c["weight"],
            c["bias"], torch.randn(1 + 8, 4), torch.randn(4, 1), None, s["A"], s["D"],
            torch.randn(1), torch.randn(4), None, 1e-6)),
        ("expert_linear", (torch.randn(3, 5), torch.randn(4, 6, 5), torch.tensor([1, 3, 1]))),
        ("rms_norm", (torch.randn(2, 3, 7), torch.randn(7), 1e-6)),
    ]
    for name, args in calls:  # test_faketensor also compares fake and real output strides
        report = torch.library.opcheck(getattr(ops, name).default, args)
        assert set(report.values()) == {"SUCCESS"}, (name, report)
    return {}


def check_model_on_triton_backend(backend_ops: dict[str, Any]) -> dict[str, Any]:
    """The real Mamba mixer (model/mamba.py: x/z chunk views, transposed B/C, cache states) on
    the Triton backend, registered for the CPU under the interpreter: a 2-layer Jamba (mamba,
    attention; ED = 16, N = 8). Prefill 11 tokens + 3 decode steps vs one reference forward."""
    from model import kernels
    from model.config import ModelConfig, jamba_layers
    from model.transformer import CausalLM

    cfg = ModelConfig(
        layers=jamba_layers(2, 2, 1, 2, 1, num_experts=1), vocab_size=32, hidden_size=8,
        intermediate_size=16, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
        mamba_d_state=8,
    )
    torch.manual_seed(0)
    model = CausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    ids = torch.randint(0, 32, (2, 14))
    kernels.register_backend("triton-interpreter", lambda: backend_ops, ("cpu",))
    with torch.no_grad():
        with kernels.use("ref"):
            want = model(ids).float()
        with kernels.use("triton-interpreter"):
            assert kernels.op_backends("cpu")["selective_scan"] == "triton-interpreter"
            cache = model.new_cache(2, 14)
            got = torch.cat([model(ids[:, :11], cache)] + [
                model(ids[:, t : t + 1], cache) for t in range(11, 14)], dim=1).float()
    return {"logits": _errors(got, want, None)}


def check_bench_script_runs() -> dict[str, Any]:
    """Smoke run of model/kernels/bench_triton.py's GPU path (every row and the sweep) at toy
    sizes on the CPU with a timer that just calls each function: a later GPU session's benchmark
    must not die on a typo. Says nothing about speed."""
    from model.kernels import bench_triton

    saved = (bench_triton.ED, bench_triton.N_STATE, bench_triton.LENGTH,
             dict(bench_triton.SCAN_SWEEP))
    bench_triton.ED, bench_triton.N_STATE, bench_triton.LENGTH = 8, 4, 20
    bench_triton.SCAN_SWEEP.update({False: [(4, 16, 4)], True: [(8, 8, 4)]})
    try:
        rows = bench_triton.bench(sweep=True, device="cpu", timer=lambda fn, slow: (fn(), 1.0)[1],
                                  dtypes=("bf16",))
    finally:
        bench_triton.ED, bench_triton.N_STATE, bench_triton.LENGTH, sweep = saved
        bench_triton.SCAN_SWEEP.update(sweep)
    assert len(rows) == 10 + 2, len(rows)
    return {}


def check_transposed_tail(conv_fn, scan_fn, channels, n_state, length, tail, device="cpu"):
    """x/z as halves of a (1, L, 2ED) in_proj output seen through a transpose (stride 2ED along
    L), bf16, the Mamba mixer's real layout. Only the last ``tail`` steps are checked, against
    the reference started from the state at L - tail (the conv's inputs; the kernel's own scan
    state), so that L can be huge on a GPU (see test_gpu_offsets_beyond_int32)."""
    torch.manual_seed(0)
    xz = torch.randn(1, length, 2 * channels, device=device, dtype=torch.bfloat16).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)  # (1, ED, L) each
    last = (slice(None), slice(None), slice(length - tail, None))
    weight, bias = torch.randn(channels, 4, device=device), torch.randn(channels, device=device)
    y, final = conv_fn(x, weight, bias)
    before = x[..., length - tail - 3 : length - tail]
    y_low, final_ref = causal_conv1d_ref(x[last], weight, bias, before)
    y32, _ = causal_conv1d_ref(x[last].float(), weight, bias, before.float())
    out = {"conv_y": _errors(y[last], y32, y_low),
           "conv_final_state": _errors(final, final_ref.float(), None)}
    del y
    delta = torch.rand(1, channels, length, device=device, dtype=torch.bfloat16)
    A = -torch.rand(channels, n_state, device=device) - 0.5
    B = torch.randn(1, n_state, length, device=device, dtype=torch.bfloat16)
    C = torch.randn(1, n_state, length, device=device, dtype=torch.bfloat16)
    y, h = scan_fn(x, delta, A, B, C, z=z)
    head = (slice(None), slice(None), slice(0, length - tail))
    _, h_mid = scan_fn(x[head], delta[head], A, B[head], C[head], z=z[head])
    y_low, h_ref = selective_scan_ref(x[last], delta[last], A, B[last], C[last], z=z[last],
                                      initial_state=h_mid)
    y32, _ = selective_scan_ref(x[last].float(), delta[last].float(), A, B[last].float(),
                                C[last].float(), z=z[last].float(), initial_state=h_mid)
    out.update(scan_y=_errors(y[last], y32, y_low), scan_final_state=_errors(h, h_ref, None))
    return out


# ---------------------------------------------------------------------------------------------
# The interpreter cases: name -> what to run, given the Triton module functions.


def _interpreter_cases() -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    c: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
    for name, dtype in DTYPES.items():
        c[f"scan_full_{name}"] = lambda t, d=dtype: check_scan(
            lambda **a: t["scan"](**a, block_d=8, block_l=16), 2, 16, 8, 40, d)
    c["scan_default_blocks_odd_sizes"] = lambda t: check_scan(
        t["scan"], 2, 10, 5, 37, torch.float32, full=False)
    c["scan_strided_views_bf16"] = lambda t: check_scan(
        lambda **a: t["scan"](**a, block_d=8, block_l=16), 1, 12, 8, 33, torch.bfloat16,
        strided=True)
    c["scan_model_layout_default_blocks"] = lambda t: check_scan(
        t["scan"], 2, 16, 8, 37, torch.float32, strided=True)
    c["scan_single_step_model_layout"] = lambda t: check_scan(  # a padded decode step's path
        t["scan"], 2, 16, 8, 1, torch.bfloat16, strided=True)
    c["conv_single_step_model_layout"] = lambda t: check_conv(
        t["conv"], 2, 16, 1, 4, torch.bfloat16, model_layout=True)
    c["scan_empty_sequence"] = lambda t: check_scan(t["scan"], 2, 4, 8, 0, torch.float32)
    c["scan_chunked_equals_one_call"] = lambda t: check_scan_chunked(
        lambda **a: t["scan"](**a, block_d=8, block_l=16), 2, 16, 8, 40, 23, torch.float32)
    c["scan_equals_decode_steps"] = lambda t: check_scan_equals_steps(
        lambda **a: t["scan"](**a, block_d=8, block_l=16), t["step"], 1, 16, 8, 6)
    for name, dtype in DTYPES.items():
        c[f"state_update_{name}"] = lambda t, d=dtype: check_state_update(
            lambda **a: t["step"](**a, block_d=4), 2, 16, 8, d)
    c["state_update_cache_view"] = lambda t: check_state_update(
        t["step"], 2, 13, 6, torch.float32, cache_view=True)
    for name, dtype in DTYPES.items():
        c[f"conv_full_{name}"] = lambda t, d=dtype: check_conv(
            lambda **a: t["conv"](**a, block_d=4, block_l=16), 2, 16, 40, 4, d)
    c["conv_no_state_no_bias_strided"] = lambda t: check_conv(
        t["conv"], 2, 10, 37, 4, torch.float32, full=False, strided=True)
    c["conv_model_layout_default_blocks"] = lambda t: check_conv(
        t["conv"], 2, 16, 37, 4, torch.bfloat16, model_layout=True)
    c["conv_shorter_than_state"] = lambda t: check_conv(t["conv"], 2, 6, 2, 4, torch.float32)
    c["conv_shorter_than_state_no_state"] = lambda t: check_conv(
        t["conv"], 2, 6, 2, 4, torch.float32, full=False)
    c["conv_empty_sequence"] = lambda t: check_conv(t["conv"], 1, 6, 0, 4, torch.bfloat16)
    c["conv_chunked_then_steps"] = lambda t: check_conv_chunked(
        lambda *a, **k: t["conv"](*a, **k, block_d=8, block_l=16), t["conv_step"], 2, 16, 30, 13, 4)
    for name, dtype in DTYPES.items():
        c[f"conv_update_{name}"] = lambda t, d=dtype: check_conv_update(t["conv_step"], 2, 16, 4, 3, d)
    c["conv_update_hf_state_len_k"] = lambda t: check_conv_update(
        t["conv_step"], 2, 10, 4, 4, torch.float32)
    # Through the registered custom ops, as the dispatcher calls them.
    c["backend_ops_scan"] = lambda t: check_scan(t["ops"]["selective_scan"], 1, 8, 4, 19,
                                                 torch.bfloat16)
    c["backend_ops_state_update"] = lambda t: check_state_update(
        t["ops"]["selective_state_update"], 1, 8, 4, torch.float32)
    c["backend_ops_conv"] = lambda t: check_conv(t["ops"]["causal_conv1d"], 1, 8, 19, 4,
                                                 torch.float32)
    c["backend_ops_conv_update"] = lambda t: check_conv_update(
        t["ops"]["causal_conv1d_update"], 1, 8, 4, 3, torch.float32)
    c["model_jamba_on_triton_backend_fp32"] = lambda t: check_model_on_triton_backend(t["ops"])
    c["transposed_views_tail"] = lambda t: check_transposed_tail(
        lambda *a, **k: t["conv"](*a, **k, block_l=16), lambda *a, **k: t["scan"](*a, **k, block_l=16),
        16, 8, 40, 8)
    c["expert_linear_fp32_small_tiles"] = lambda t: check_expert_linear(
        lambda *a: t["expert"](*a, block_n=4, block_k=8), 5, 3, 10, 21, torch.float32)
    c["expert_linear_bf16"] = lambda t: check_expert_linear(t["expert"], 4, 3, 24, 40,
                                                            torch.bfloat16)
    c["backend_ops_expert_linear"] = lambda t: check_expert_linear(
        t["ops"]["expert_linear"], 2, 4, 16, 8, torch.float32)
    c["rms_norm_fp32_odd_width"] = lambda t: check_rms_norm(t["rms_norm"], (5, 37), torch.float32)
    c["rms_norm_bf16_split_view"] = lambda t: check_rms_norm(t["rms_norm"], (2, 3, 24),
                                                             torch.bfloat16, strided=True)
    c["backend_ops_rms_norm"] = lambda t: check_rms_norm(t["ops"]["rms_norm"], (3, 16),
                                                         torch.float32)
    c["bench_script_runs"] = lambda t: check_bench_script_runs()
    c["gpu_tests_smoke"] = lambda t: check_gpu_tests_on_cpu()
    c["backend_custom_ops_pass_opcheck"] = lambda t: check_custom_ops_opcheck()
    for name in ("fp32", "bf16"):
        c[f"backend_ops_mamba_decode_step_{name}"] = lambda t, d=DTYPES[name]: (
            check_mamba_decode_step(t["ops"]["mamba_decode_step"], 2, 16, 8, 3, d))
    # rank 40 -> R + 2N = 56: several x_proj (32) and dt (32) chunks; ED 12 in blocks of 4 ->
    # 3 blocks of partials in a tile of 4 (one masked)
    c["decode_fused_multi_chunk"] = lambda t: check_mamba_decode_step(
        lambda *a, **k: t["decode_fused"](*a, **k, block_d=4), 2, 12, 8, 40, torch.float32)
    c["decode_fused_bare_odd_sizes"] = lambda t: check_mamba_decode_step(
        t["decode_fused"], 2, 12, 5, 40, torch.bfloat16, bare=True)
    c["decode_composed_fp32"] = lambda t: check_mamba_decode_step(
        t["decode_composed"], 2, 16, 8, 3, torch.float32)
    return c


INTERPRETER_CASES = sorted(_interpreter_cases())


def _run_interpreter_cases() -> None:
    """Subprocess entry point: TRITON_INTERPRET is already set; print one JSON line of results."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import model.kernels

    before_triton = "triton" in sys.modules
    from model.kernels import (
        dispatch,
        triton_backend,
        triton_conv,
        triton_decode,
        triton_expert,
        triton_rms_norm,
        triton_scan,
        triton_state_update,
    )

    fns = {
        "scan": triton_scan.selective_scan,
        "step": triton_state_update.selective_state_update,
        "conv": triton_conv.causal_conv1d,
        "conv_step": triton_conv.causal_conv1d_update,
        "ops": dispatch._registry["triton"].loader(),  # what use("triton") gets on CUDA
        "decode_fused": triton_decode.mamba_decode_step,
        "decode_composed": triton_backend.mamba_decode_step_composed,
        "expert": triton_expert.expert_linear,
        "rms_norm": triton_rms_norm.rms_norm,
    }
    del model.kernels
    results: dict[str, Any] = {
        "_import_model_kernels_loaded_triton": before_triton,
        "_triton_loader_ops": {name: fn.__module__ for name, fn in fns["ops"].items()},
    }
    for name, case in _interpreter_cases().items():
        start = time.perf_counter()
        try:
            results[name] = {**case(fns), "seconds": time.perf_counter() - start}
        except Exception as exc:  # reported per case by the parent
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print("RESULTS " + json.dumps(results))


def _require_triton() -> None:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed: pip install 'maestro-agents[gpu]' (or [test])")


@pytest.fixture(scope="module")
def interpreter_results() -> dict[str, Any]:
    _require_triton()
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.model.test_kernels_triton"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stdout}\n{proc.stderr}"
    results = json.loads(lines[-1].removeprefix("RESULTS "))
    print(f"interpreter subprocess: {time.perf_counter() - start:.1f} s")
    return results


def _assert_within(case: str, result: dict[str, Any]) -> None:
    assert "error" not in result, f"{case}: {result['error']}"
    for output, err in result.items():
        if output == "seconds":
            continue
        print(f"{case:34s} {output:12s} max {err['max']:.3e}  mean {err['mean']:.3e}  "
              f"ref(low) {err['ref_err']:.3e}  tol {err['tol']:.3e}")
    for output, err in result.items():
        if output != "seconds":
            assert err["max"] <= err["tol"], f"{case}: {output} max error {err['max']} > {err['tol']}"


@pytest.mark.triton
@pytest.mark.parametrize("case", INTERPRETER_CASES)
def test_triton_kernel_under_interpreter(case: str, interpreter_results: dict[str, Any]) -> None:
    _assert_within(case, interpreter_results[case])


@pytest.mark.triton
def test_importing_model_kernels_does_not_import_triton(interpreter_results) -> None:
    assert interpreter_results["_import_model_kernels_loaded_triton"] is False


@pytest.mark.triton
def test_triton_backend_is_what_dispatch_loads_for_cuda(interpreter_results) -> None:
    """The dispatcher's "triton" backend is the CUDA default and its loader (run in the
    interpreter subprocess) returns the Triton op table: the five Mamba ops, the MoE's
    ``expert_linear`` and ``rms_norm``, each a Triton
    implementation (other ops, e.g. quantised matmuls, fall back to their references)."""
    from model.kernels import dispatch

    backend = dispatch._registry["triton"]
    assert backend.device_types == ("cuda",)
    assert dispatch.AUTO_PREFERENCE["cuda"][0] == "triton"
    loaded = interpreter_results["_triton_loader_ops"]
    print(loaded)
    assert sorted(loaded) == ["causal_conv1d", "causal_conv1d_update", "expert_linear",
                              "mamba_decode_step", "rms_norm", "selective_scan",
                              "selective_state_update"]
    assert set(loaded) <= set(dispatch._REFERENCE_OPS), "an op without a reference"
    assert all(module.startswith("model.kernels.triton_backend") for module in loaded.values())


@pytest.mark.triton
def test_kernels_compile_for_sm90_without_spills() -> None:
    """What the interpreter cannot see: each kernel, specialised as the runtime would for
    real-size tensors, compiles through Triton's NVIDIA pipeline to a cubin for sm_90, and fits
    in registers (no local-memory spills). No GPU is needed; it proves nothing about speed."""
    _require_triton()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run(
        [sys.executable, "-m", "model.kernels.bench_triton", "--compile-report", "--sm", "90",
         "--dtypes", "bf16", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS ")]
    assert lines, f"compile report failed:\n{proc.stdout}\n{proc.stderr}"
    rows = json.loads(lines[-1].removeprefix("ROWS "))
    for row in rows:
        print(row)
    main = {"selective_scan", "selective_state_update", "causal_conv1d", "causal_conv1d_update",
            "mamba_decode_step [1/2]", "mamba_decode_step [2/2]"}
    assert {row["op"] for row in rows} == (
        main | {f"{op} (bare)" for op in main}
        | {"selective_scan (model layout)", "causal_conv1d (model layout)", "expert_linear",
           "rms_norm"})
    for row in rows:
        assert "error" not in row, row
        assert row["local"] == 0 and row["regs"] <= 255, row


# ---------------------------------------------------------------------------------------------
# Real sizes on a real GPU (skipped without CUDA by tests/conftest.py).

# The sizes live in one dict so that the interpreter run can smoke-test these functions on tiny
# sizes on the CPU (case "gpu_tests_smoke"): a later GPU session should not die on a typo.
GPU = dict(device="cuda", ed=2048, n=16, length=2048, steps=64, rank=128,
           big_ed=8192, big_rank=256, long=2**19, tail=64, experts=8, hidden=4096, ffn=14336)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpu_selective_scan_real_size(dtype: str) -> None:
    from model.kernels.triton_scan import selective_scan

    for strided in (False, True):
        _assert_within(f"gpu_scan_{dtype}_{'model_layout' if strided else 'contiguous'}",
                       check_scan(selective_scan, 2, GPU["ed"], GPU["n"], GPU["length"],
                                  DTYPES[dtype], GPU["device"], strided=strided))


@pytest.mark.gpu
def test_gpu_scan_chunked_and_decode_steps() -> None:
    from model.kernels.triton_scan import selective_scan
    from model.kernels.triton_state_update import selective_state_update

    _assert_within("gpu_scan_chunked", check_scan_chunked(
        selective_scan, 2, GPU["ed"], GPU["n"], GPU["length"], GPU["length"] // 2 - 24,
        torch.float32, GPU["device"]))
    _assert_within("gpu_scan_vs_steps", check_scan_equals_steps(
        selective_scan, selective_state_update, 2, GPU["ed"], GPU["n"], GPU["steps"],
        GPU["device"]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpu_selective_state_update_real_size(dtype: str) -> None:
    from model.kernels.triton_state_update import selective_state_update

    for batch in (1, 8):
        _assert_within(f"gpu_step_{dtype}_b{batch}", check_state_update(
            selective_state_update, batch, GPU["ed"], GPU["n"], DTYPES[dtype], GPU["device"],
            cache_view=True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpu_causal_conv1d_real_size(dtype: str) -> None:
    from model.kernels.triton_conv import causal_conv1d, causal_conv1d_update

    for layout in ("contiguous", "strided", "model_layout"):
        _assert_within(f"gpu_conv_{dtype}_{layout}", check_conv(
            causal_conv1d, 2, GPU["ed"], GPU["length"], 4, DTYPES[dtype], GPU["device"],
            strided=layout == "strided", model_layout=layout == "model_layout"))
    _assert_within(f"gpu_conv_update_{dtype}", check_conv_update(
        causal_conv1d_update, 8, GPU["ed"], 4, 3, DTYPES[dtype], GPU["device"]))
    if dtype == "fp32":
        _assert_within("gpu_conv_chunked", check_conv_chunked(
            causal_conv1d, causal_conv1d_update, 2, GPU["ed"], GPU["length"],
            GPU["length"] // 3 + 5, 4, GPU["device"]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gpu_mamba_decode_step_real_size(dtype: str) -> None:
    from model.kernels.triton_backend import mamba_decode_step, mamba_decode_step_composed

    for fn in (mamba_decode_step, mamba_decode_step_composed):
        for batch in (1, 8):  # Jamba-v0.1's mixer is ED 8192, N 16, R 256 (the "bare" case)
            _assert_within(f"gpu_decode_{fn.__name__}_{dtype}_b{batch}", check_mamba_decode_step(
                fn, batch, GPU["ed"], GPU["n"], GPU["rank"], DTYPES[dtype],
                device=GPU["device"]))
        _assert_within(f"gpu_decode_{fn.__name__}_{dtype}_bare", check_mamba_decode_step(
            fn, 2, GPU["big_ed"], GPU["n"], GPU["big_rank"], DTYPES[dtype],
            device=GPU["device"], bare=True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpu_expert_linear_real_size(dtype: str) -> None:
    from model.kernels.triton_expert import expert_linear

    for slots, n_out, n_in in ((2, GPU["ffn"], GPU["hidden"]), (16, GPU["hidden"], GPU["ffn"])):
        _assert_within(f"gpu_expert_linear_{dtype}_s{slots}", check_expert_linear(
            expert_linear, slots, GPU["experts"], n_out, n_in, DTYPES[dtype], GPU["device"]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gpu_rms_norm_real_size(dtype: str) -> None:
    from model.kernels.triton_rms_norm import rms_norm

    for shape, strided in (((1, GPU["length"], GPU["hidden"]), False), ((GPU["length"], 160), True)):
        _assert_within(f"gpu_rms_norm_{dtype}_{shape[-1]}", check_rms_norm(
            rms_norm, shape, DTYPES[dtype], GPU["device"], strided=strided))


@pytest.mark.gpu
def test_gpu_offsets_beyond_int32() -> None:
    """L * 2ED = 2**31 elements in the transposed in_proj output: offsets past int32 must not
    wrap (about 16 GB of GPU memory at the peak)."""
    from model.kernels.triton_conv import causal_conv1d
    from model.kernels.triton_scan import selective_scan

    result = check_transposed_tail(causal_conv1d, selective_scan, GPU["ed"], GPU["n"],
                                   GPU["long"], GPU["tail"], GPU["device"])
    _assert_within("gpu_int64_offsets", result)


def check_gpu_tests_on_cpu() -> dict[str, Any]:
    """Run the bodies of the gpu tests above at toy sizes on the CPU (interpreter)."""
    saved = dict(GPU)
    GPU.update(device="cpu", ed=8, n=4, length=20, steps=3, rank=3, big_ed=8, big_rank=3,
               long=24, tail=8, experts=3, hidden=12, ffn=20)
    try:
        test_gpu_selective_scan_real_size("bf16")
        test_gpu_selective_state_update_real_size("bf16")
        test_gpu_causal_conv1d_real_size("fp32")
        test_gpu_mamba_decode_step_real_size("bf16")
        test_gpu_scan_chunked_and_decode_steps()
        test_gpu_offsets_beyond_int32()
        test_gpu_expert_linear_real_size("bf16")
        test_gpu_rms_norm_real_size("bf16")
    finally:
        GPU.clear()
        GPU.update(saved)
    return {}


@pytest.mark.gpu
def test_gpu_dispatcher_picks_triton() -> None:
    from model import kernels

    with kernels.use("auto"):
        assert kernels.active_backend("cuda") == "triton"
        backends = kernels.op_backends("cuda")
    for op in ("selective_scan", "selective_state_update", "causal_conv1d", "causal_conv1d_update",
               "mamba_decode_step", "expert_linear", "rms_norm"):
        assert backends[op] == "triton", backends


if __name__ == "__main__":
    _run_interpreter_cases()
