"""The "triton" kernel backend: ``OPS`` maps op names to the Triton kernels, as torch custom ops.

:mod:`model.kernels.dispatch` imports this module (and so Triton) only when the Triton backend is
selected for a CUDA device; importing :mod:`model.kernels` never does.

``mamba_decode_step`` is the two-launch Triton kernel of :mod:`model.kernels.triton_decode`.
``mamba_decode_step_composed`` (not in ``OPS``) is the same step built from the Triton conv and
state updates with x_proj / RMSNorm / dt_proj in PyTorch between them (about twenty launches):
the fallback to switch to if the fused kernel misbehaves on some GPU, and its cross-check.

Each op is a ``torch.library.custom_op`` in the ``model_triton`` namespace with a fake (meta)
implementation, so ``torch.compile`` traces the model through them as opaque calls; the state
updates declare what they mutate. Outside a ``torch.compile`` trace the public functions below
call the Triton launchers directly (see ``_call``). GPU correctness and speed: the module
docstrings of ``triton_scan`` / ``triton_conv`` / ``triton_state_update`` / ``triton_decode`` and
``pytest -m gpu`` (tests/model/test_kernels_triton.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from model.kernels import (
    triton_conv,
    triton_decode,
    triton_expert,
    triton_rms_norm,
    triton_scan,
    triton_state_update,
)
from model.kernels.rms_norm import rms_norm_ref

_NS = "model_triton"


@torch.library.custom_op(f"{_NS}::selective_scan", mutates_args=())
def _selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_scan.selective_scan(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state
    )


@_selective_scan.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    batch, channels, _ = u.shape
    state = u.new_empty((batch, channels, A.shape[1]), dtype=torch.float32)
    return triton_scan.empty_sequence_like(u), state  # the real kernel's output layout


@torch.library.custom_op(f"{_NS}::selective_state_update", mutates_args=("state",))
def _selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> torch.Tensor:
    return triton_state_update.selective_state_update(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus
    )


@_selective_state_update.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op(f"{_NS}::causal_conv1d", mutates_args=())
def _causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_conv.causal_conv1d(x, weight, bias, initial_state, "silu" if silu else None)


@_causal_conv1d.register_fake
def _(x, weight, bias, initial_state, silu):
    batch, channels, _ = x.shape
    state = x.new_empty((batch, channels, weight.shape[1] - 1))
    return triton_scan.empty_sequence_like(x), state


@torch.library.custom_op(f"{_NS}::causal_conv1d_update", mutates_args=("conv_state",))
def _causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    silu: bool,
) -> torch.Tensor:
    return triton_conv.causal_conv1d_update(x, conv_state, weight, bias, "silu" if silu else None)


@_causal_conv1d_update.register_fake
def _(x, conv_state, weight, bias, silu):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _call(op: Callable[..., Any], direct: Callable[..., Any], *args: Any) -> Any:
    """The custom op while ``torch.compile`` traces (it needs the op's schema and fake kernel),
    else the Triton launcher directly: a custom op's Python dispatch cost ~100-250 us a call on
    the H100 machine's host, more than most of these kernels run, and a GPU prefill chunk of a
    small model is bound by its launches."""
    return op(*args) if torch.compiler.is_compiling() else direct(*args)


def _conv(x, weight, bias, initial_state, silu):
    return triton_conv.causal_conv1d(x, weight, bias, initial_state, "silu" if silu else None)


def _conv_update(x, conv_state, weight, bias, silu):
    return triton_conv.causal_conv1d_update(x, conv_state, weight, bias, "silu" if silu else None)


def _silu_flag(activation: str | None) -> bool:
    if activation in ("silu", "swish"):
        return True
    if activation is None:
        return False
    raise ValueError(f"activation must be one of (None, 'silu', 'swish'), got {activation!r}")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None):
    """Triton selective scan; contract of :func:`model.kernels.selective_scan_ref`."""
    y, state = _call(_selective_scan, triton_scan.selective_scan,
                     u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state)
    return y, state


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False):
    """Triton decode step; contract of :func:`model.kernels.selective_state_update_ref`."""
    return _call(_selective_state_update, triton_state_update.selective_state_update,
                 state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))


def causal_conv1d(x, weight, bias=None, initial_state=None, activation="silu"):
    """Triton causal conv; contract of :func:`model.kernels.causal_conv1d_ref`."""
    y, state = _call(_causal_conv1d, _conv, x, weight, bias, initial_state, _silu_flag(activation))
    return y, state


def causal_conv1d_update(x, conv_state, weight, bias=None, activation="silu"):
    """Triton conv decode step; contract of :func:`model.kernels.causal_conv1d_update_ref`."""
    return _call(_causal_conv1d_update, _conv_update, x, conv_state, weight, bias,
                 _silu_flag(activation))


def _rms_norm(v: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    if weight is None:
        return v
    return weight.float() * (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps))


@torch.library.custom_op(f"{_NS}::mamba_decode_step", mutates_args=("conv_state", "ssm_state"))
def _mamba_decode_step(
    x: torch.Tensor,
    z: torch.Tensor | None,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor | None,
    A: torch.Tensor,
    D: torch.Tensor | None,
    dt_norm_weight: torch.Tensor | None,
    b_norm_weight: torch.Tensor | None,
    c_norm_weight: torch.Tensor | None,
    norm_eps: float,
) -> torch.Tensor:
    return triton_decode.mamba_decode_step(
        x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
        dt_proj_bias, A, D, dt_norm_weight, b_norm_weight, c_norm_weight, norm_eps,
    )


@_mamba_decode_step.register_fake
def _(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
      dt_proj_bias, A, D, dt_norm_weight, b_norm_weight, c_norm_weight, norm_eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def mamba_decode_step(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                      dt_proj_weight, dt_proj_bias, A, D, dt_norm_weight=None, b_norm_weight=None,
                      c_norm_weight=None, norm_eps=1e-6):
    """Fused (two-launch) Triton mixer decode step; contract of
    :func:`model.kernels.mamba_decode_step_ref` (``conv_state``, ``ssm_state`` updated in place)."""
    return _call(_mamba_decode_step, triton_decode.mamba_decode_step,
                 x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                 dt_proj_weight, dt_proj_bias, A, D, dt_norm_weight, b_norm_weight,
                 c_norm_weight, float(norm_eps))


def mamba_decode_step_composed(x, z, conv_state, ssm_state, conv_weight, conv_bias,
                               x_proj_weight, dt_proj_weight, dt_proj_bias, A, D,
                               dt_norm_weight=None, b_norm_weight=None, c_norm_weight=None,
                               norm_eps=1e-6):
    """The mixer for one token from the separate Triton kernels; contract of
    :func:`model.kernels.mamba_decode_step_ref` (``conv_state``, ``ssm_state`` updated in place).

    Shapes: x, z (Bt, ED); conv_state (Bt, ED, K-1); ssm_state (Bt, ED, N) fp32; x_proj_weight
    (R+2N, ED); dt_proj_weight (ED, R). Returns y (Bt, ED) in ``x.dtype``.
    """
    n_state = A.shape[1]
    rank = dt_proj_weight.shape[1]
    u = causal_conv1d_update(x.float(), conv_state, conv_weight, conv_bias, "silu")  # (Bt, ED)
    p = torch.nn.functional.linear(u, x_proj_weight.float())  # (Bt, R+2N)
    dt, B, C = torch.split(p, [rank, n_state, n_state], dim=-1)
    dt = _rms_norm(dt, dt_norm_weight, norm_eps)
    B = _rms_norm(B, b_norm_weight, norm_eps)
    C = _rms_norm(C, c_norm_weight, norm_eps)
    delta = torch.nn.functional.linear(dt, dt_proj_weight.float())  # (Bt, ED)
    y = selective_state_update(ssm_state, u, delta, A, B, C, D, z, dt_bias=dt_proj_bias,
                               dt_softplus=True)
    return y.to(x.dtype)


@torch.library.custom_op(f"{_NS}::expert_linear", mutates_args=())
def _expert_linear(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    return triton_expert.expert_linear(x, weights, experts)


@_expert_linear.register_fake
def _(x, weights, experts):
    return x.new_empty((x.shape[0], weights.shape[1]))


def expert_linear(x, weights, experts):
    """Triton routed-expert matvec; contract of :func:`model.kernels.expert_linear_ref`."""
    return _call(_expert_linear, triton_expert.expert_linear, x, weights, experts)


@torch.library.custom_op(f"{_NS}::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return triton_rms_norm.rms_norm(x, weight, eps)


@_rms_norm_op.register_fake
def _(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def rms_norm(x, weight, eps):
    """Triton RMSNorm; contract of :func:`model.kernels.rms_norm_ref` (a weight of another
    dtype than x, or rows wider than the kernel holds, run the reference)."""
    if not triton_rms_norm.fits(x, weight):
        return rms_norm_ref(x, weight, eps)
    return _call(_rms_norm_op, triton_rms_norm.rms_norm, x, weight, float(eps))


OPS: dict[str, Callable[..., Any]] = {
    "causal_conv1d": causal_conv1d,
    "causal_conv1d_update": causal_conv1d_update,
    "expert_linear": expert_linear,
    "mamba_decode_step": mamba_decode_step,
    "rms_norm": rms_norm,
    "selective_scan": selective_scan,
    "selective_state_update": selective_state_update,
}
