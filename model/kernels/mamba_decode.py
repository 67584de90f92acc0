"""The whole Jamba Mamba mixer for ONE token, between in_proj and out_proj, as one op.

Glossary: Bt batch, ED channels (d_inner), N state size, R dt_rank, K conv width.

Why fused: a decode step of the mixer is a dozen small ops (conv window shift, conv, SiLU,
x_proj, three RMSNorms, dt_proj, softplus, scan step, D skip, gate) on vectors of a few thousand
numbers; in PyTorch each costs more in dispatch than in arithmetic. In Jamba the x_proj, the
dt/B/C RMSNorms and dt_proj sit *between* the conv and the scan, so this op takes their weights
rather than fusing two halves around a PyTorch matmul: x_proj is (R+2N) x ED and dt_proj ED x R,
small enough that one pass over them inside the kernel is cheaper than leaving it. in_proj and
out_proj (the big matmuls, bandwidth-bound) stay outside, in PyTorch.

The math, per batch row (all in fp32, states updated in place)::

    u          = silu(conv_step(x, conv_state, conv_weight, conv_bias))       (ED,)
    dt, B, C   = split(x_proj_weight @ u, [R, N, N])
    dt, B, C   = rms(dt) * dt_norm_weight, rms(B) * b_norm_weight, rms(C) * c_norm_weight
    delta      = softplus(dt_proj_weight @ dt + dt_proj_bias)                 (ED,)
    y          = selective_state_update(ssm_state, u, delta, A, B, C, D, z)    (ED,)

The norm weights are optional (None: no norm, which is plain Mamba-1).
"""

from __future__ import annotations

import torch

from model.kernels.causal_conv1d import causal_conv1d_update_ref
from model.kernels.dispatch import implementation, register_reference
from model.kernels.selective_scan import selective_state_update_ref


def _rms_norm(v: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    if weight is None:
        return v
    v = v.float()
    return weight.float() * (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps))


def mamba_decode_step_ref(
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
    dt_norm_weight: torch.Tensor | None = None,
    b_norm_weight: torch.Tensor | None = None,
    c_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
) -> torch.Tensor:
    """Reference fused decode step; ``conv_state`` and ``ssm_state`` are updated IN PLACE.

    Shapes: x, z (Bt, ED): the two halves of in_proj's output for this token; conv_state
    (Bt, ED, K-1); ssm_state (Bt, ED, N) fp32; conv_weight (ED, K); conv_bias (ED,);
    x_proj_weight (R+2N, ED); dt_proj_weight (ED, R); dt_proj_bias (ED,); A (ED, N) negative;
    D (ED,); dt_norm_weight (R,); b/c_norm_weight (N,). Returns y (Bt, ED) in ``x.dtype``,
    ready for out_proj.
    """
    n_state = A.shape[1]
    rank = dt_proj_weight.shape[1]
    u = causal_conv1d_update_ref(x.float(), conv_state, conv_weight, conv_bias, "silu")
    p = u @ x_proj_weight.float().t()  # (Bt, R+2N)
    dt, B, C = torch.split(p, [rank, n_state, n_state], dim=-1)
    dt = _rms_norm(dt, dt_norm_weight, norm_eps)
    B = _rms_norm(B, b_norm_weight, norm_eps)
    C = _rms_norm(C, c_norm_weight, norm_eps)
    delta = dt @ dt_proj_weight.float().t()  # (Bt, ED), bias added in fp32 with the softplus
    y = selective_state_update_ref(
        ssm_state, u, delta, A, B, C, D, z, dt_bias=dt_proj_bias, dt_softplus=True
    )
    return y.to(x.dtype)


register_reference("mamba_decode_step", mamba_decode_step_ref)


def mamba_decode_step(
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
    dt_norm_weight: torch.Tensor | None = None,
    b_norm_weight: torch.Tensor | None = None,
    c_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
) -> torch.Tensor:
    """Fused decode step on the active backend; same contract as :func:`mamba_decode_step_ref`."""
    fn = implementation("mamba_decode_step", x.device.type)
    return fn(
        x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
        dt_proj_bias, A, D, dt_norm_weight, b_norm_weight, c_norm_weight, norm_eps,
    )
