"""The reference ops are the specification: check them against independent formulations.

The fast backends are tested against these references in test_kernels_cpu.py; here the
references themselves are checked against closed forms (float64) and against each other
(a scan == its decode steps == two chained half scans).
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from model import kernels
from model.kernels import (
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    mamba_decode_step_ref,
    selective_scan_ref,
    selective_state_update_ref,
)


def _scan_inputs(batch=2, channels=6, n_state=4, length=9, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    return dict(
        u=r(batch, channels, length).to(dtype),
        delta=(r(batch, channels, length) * 0.5).to(dtype),
        A=-torch.exp(r(channels, n_state) * 0.5),
        B=r(batch, n_state, length).to(dtype),
        C=r(batch, n_state, length).to(dtype),
        D=r(channels),
        z=r(batch, channels, length).to(dtype),
        delta_bias=r(channels) * 0.1,
        delta_softplus=True,
        initial_state=r(batch, channels, n_state),
    )


def _scan_closed_form(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    """h_t = P(0..t) h_0 + sum_{s<=t} P(s+1..t) dt_s B_s u_s with P the product of decays, float64."""
    dt = (delta.double() + delta_bias.double()[:, None])
    dt = F.softplus(dt) if delta_softplus else dt
    log_decay = dt[..., None] * A.double()[None, :, None, :]  # (Bt, ED, L, N)
    cum = torch.cumsum(log_decay, dim=2)  # sum_{r<=t}
    length = u.shape[-1]
    # decay from s (exclusive) to t (inclusive): exp(cum_t - cum_s)
    diff = cum[:, :, :, None, :] - cum[:, :, None, :, :]  # (Bt, ED, t, s, N)
    mask = torch.tril(torch.ones(length, length, dtype=torch.bool))[None, None, :, :, None]
    weights = torch.where(mask, torch.exp(diff), torch.zeros((), dtype=torch.float64))
    drive = dt[..., None] * B.double().transpose(1, 2)[:, None] * u.double()[..., None]
    h = torch.einsum("bdtsn,bdsn->bdtn", weights, drive)
    h = h + torch.exp(cum) * initial_state.double()[:, :, None, :]
    y = torch.einsum("bdtn,bnt->bdt", h, C.double()) + D.double()[:, None] * u.double()
    return y * F.silu(z.double()), h[:, :, -1]


def test_selective_scan_ref_matches_closed_form():
    inputs = _scan_inputs()
    y, last = selective_scan_ref(**inputs)
    y64, last64 = _scan_closed_form(**inputs)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    print("scan ref vs closed form: max", (y.double() - y64).abs().max().item())
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.double(), last64, rtol=1e-5, atol=1e-5)


def test_selective_scan_ref_chains_and_matches_decode_steps():
    inputs = _scan_inputs(length=10)
    y, last = selective_scan_ref(**inputs)
    # Two halves chained through the state.
    first = {k: (v[..., :4] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
    second = {k: (v[..., 4:] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
    y1, mid = selective_scan_ref(**first)
    second["initial_state"] = mid
    y2, last2 = selective_scan_ref(**second)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y)
    torch.testing.assert_close(last2, last)
    # Step by step.
    state = inputs["initial_state"].clone()
    steps = []
    for t in range(10):
        steps.append(
            selective_state_update_ref(
                state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"],
                inputs["B"][..., t], inputs["C"][..., t], inputs["D"], inputs["z"][..., t],
                dt_bias=inputs["delta_bias"], dt_softplus=True,
            )
        )
    torch.testing.assert_close(torch.stack(steps, -1), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-5)


def test_selective_scan_ref_bf16_returns_input_dtype_fp32_state():
    inputs = _scan_inputs(dtype=torch.bfloat16)
    y, last = selective_scan_ref(**inputs)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32


@pytest.mark.parametrize("length", [1, 2, 11])
def test_causal_conv1d_ref_matches_conv1d_and_chains(length):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, length, generator=g)
    w = torch.randn(5, 4, generator=g)
    b = torch.randn(5, generator=g)
    init = torch.randn(2, 5, 3, generator=g)
    y, final = causal_conv1d_ref(x, w, b, init, activation="silu")
    full = torch.cat([init, x], -1)
    expected = F.silu(F.conv1d(full, w[:, None, :], b, groups=5))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final, full[..., -3:])
    # Decode steps continue from the same state and give the same outputs.
    state = init.clone()
    outs = [causal_conv1d_update_ref(x[..., t], state, w, b, "silu") for t in range(length)]
    torch.testing.assert_close(torch.stack(outs, -1), y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, final)


def test_causal_conv1d_update_ref_accepts_hf_width_state():
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(1, 3, generator=g), torch.randn(3, 4, generator=g)
    short = torch.randn(1, 3, 3, generator=g)
    long = torch.cat([torch.randn(1, 3, 1, generator=g), short], -1)  # HF keeps K entries
    y_short = causal_conv1d_update_ref(x, short, w, None, None)
    y_long = causal_conv1d_update_ref(x, long, w, None, None)
    torch.testing.assert_close(y_short, y_long)
    torch.testing.assert_close(long[..., 1:], short)


def test_mamba_decode_step_ref_matches_unfused_prefill():
    """The fused step equals conv + x_proj + norms + dt_proj + scan run over a sequence."""
    g = torch.Generator().manual_seed(3)
    batch, channels, n_state, rank, width, length = 2, 8, 4, 3, 4, 5

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    x, z = r(batch, channels, length), r(batch, channels, length)
    conv_w, conv_b = r(channels, width), r(channels)
    xproj = r(rank + 2 * n_state, channels, scale=0.3)
    dtproj, dtbias = r(channels, rank, scale=0.3), r(channels, scale=0.1)
    A, D = -torch.exp(r(channels, n_state)), r(channels)
    norms = r(rank), r(n_state), r(n_state)

    def rms(v, w):
        return w * v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)

    u, conv_final = causal_conv1d_ref(x, conv_w, conv_b)
    p = u.transpose(1, 2) @ xproj.t()
    dt, B, C = torch.split(p, [rank, n_state, n_state], -1)
    dt, B, C = rms(dt, norms[0]), rms(B, norms[1]), rms(C, norms[2])
    y, ssm_final = selective_scan_ref(
        u, (dt @ dtproj.t()).transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D, z,
        dtbias, True,
    )
    conv_state = torch.zeros(batch, channels, width - 1)
    ssm_state = torch.zeros(batch, channels, n_state)
    steps = [
        mamba_decode_step_ref(
            x[..., t], z[..., t], conv_state, ssm_state, conv_w, conv_b, xproj, dtproj, dtbias,
            A, D, *norms,
        )
        for t in range(length)
    ]
    torch.testing.assert_close(torch.stack(steps, -1), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv_state, conv_final)
    torch.testing.assert_close(ssm_state, ssm_final, rtol=1e-5, atol=1e-5)


def test_use_restores_previous_choice_and_rejects_unknown():
    with kernels.use("ref"):
        assert kernels.active_backend("cpu") == "ref"
        assert set(kernels.op_backends("cpu").values()) == {"ref"}
        with kernels.use("auto"):
            pass
        assert kernels.active_backend("cpu") == "ref"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.use("cuda-magic")


def test_explicit_backend_on_wrong_device_raises_with_fix():
    with kernels.use("triton"), pytest.raises(kernels.BackendUnavailable, match="use"):
        kernels.active_backend("cpu")


def test_auto_falls_back_with_one_warning(caplog):
    def broken():
        raise kernels.BackendUnavailable("no compiler here; install g++")

    kernels.register_backend("broken", broken, ("meta",))
    kernels.dispatch.AUTO_PREFERENCE["meta"] = ("broken",)
    try:
        with kernels.use("auto"), caplog.at_level(logging.WARNING):
            assert kernels.active_backend("meta") == "ref"
            kernels.use("auto")  # re-resolving must not warn again
            assert kernels.active_backend("meta") == "ref"
        assert sum("no compiler here" in r.getMessage() for r in caplog.records) == 1
        with kernels.use("broken"), pytest.raises(kernels.BackendUnavailable, match="g\\+\\+"):
            kernels.active_backend("meta")
    finally:
        del kernels.dispatch.AUTO_PREFERENCE["meta"]
        del kernels.dispatch._registry["broken"]


def test_dispatchers_route_to_reference():
    inputs = _scan_inputs()
    with kernels.use("ref"):
        y, last = kernels.selective_scan(**inputs)
    y_ref, last_ref = selective_scan_ref(**inputs)
    assert torch.equal(y, y_ref) and torch.equal(last, last_ref)
