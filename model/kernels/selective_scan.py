"""Mamba-1 selective scan: prefill over a sequence (``selective_scan``) and one decode step
(``selective_state_update``), each with its fp32 PyTorch reference beside the dispatcher.

Glossary: Bt batch, ED channels (d_inner), N state size (d_state), L sequence length.

The recurrence, per batch b, channel d and state index n (Mamba paper, eq. 2a/2b, discretised
with zero-order hold for A and Euler for B, as mamba-ssm does)::

    dt_t = softplus(delta_t + bias)            (or delta_t + bias without softplus)
    h_t  = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
    y_t  = sum_n h_t[n] * C_t[n] + D[d] * u_t
    y_t *= silu(z_t)                           (when a gate z is given)

Jamba's B and C are per token and shared by all channels (shape (Bt, N, L)). The state is fp32
whatever the input dtype; outputs come back in ``u.dtype``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.kernels.dispatch import implementation, register_reference


def _dt(delta: torch.Tensor, bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    """fp32 step size: bias added and softplus applied in fp32 (mamba-ssm's fast-path casting)."""
    dt = delta.float()
    if bias is not None:
        # delta is (Bt, ED, L) for a scan or (Bt, ED) for a step; bias is (ED,).
        dt = dt + (bias.float()[:, None] if dt.dim() == 3 else bias.float())
    # F.softplus uses threshold 20 (x > 20 -> x), the same rule as the CUDA/Triton kernels.
    return F.softplus(dt) if softplus else dt


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference selective scan over a whole sequence, in fp32.

    Shapes: u, delta, z (Bt, ED, L); A (ED, N), already negative (A = -exp(A_log));
    B, C (Bt, N, L); D, delta_bias (ED,); initial_state (Bt, ED, N), zeros when None.
    Returns ``(y, final_state)``: y (Bt, ED, L) in ``u.dtype``, final_state (Bt, ED, N) fp32.

    A Python loop over L: slow, obvious, and the specification the fast backends are tested on.
    """
    batch, channels, length = u.shape
    n_state = A.shape[1]
    u32 = u.float()
    dt = _dt(delta, delta_bias, delta_softplus)  # (Bt, ED, L)
    A32 = A.float()
    B32 = B.float()
    C32 = C.float()
    if initial_state is None:
        h = u.new_zeros((batch, channels, n_state), dtype=torch.float32)
    else:
        h = initial_state.float().clone()
    ys = []
    for t in range(length):
        dt_t = dt[:, :, t, None]  # (Bt, ED, 1)
        decay = torch.exp(dt_t * A32)  # (Bt, ED, N)
        h = decay * h + dt_t * B32[:, None, :, t] * u32[:, :, t, None]
        ys.append(torch.einsum("bdn,bn->bd", h, C32[:, :, t]))
    y = torch.stack(ys, dim=-1) if ys else u32.new_zeros((batch, channels, 0))
    if D is not None:
        y = y + D.float()[:, None] * u32
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype), h


def selective_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """Reference single decode step; ``state`` (Bt, ED, N) is updated IN PLACE.

    Shapes: x, dt, z (Bt, ED); A (ED, N); B, C (Bt, N); D, dt_bias (ED,).
    Computes in fp32 and returns y (Bt, ED) in ``x.dtype``; the state keeps its dtype (fp32 in
    this engine).
    """
    step = _dt(dt, dt_bias, dt_softplus)[..., None]  # (Bt, ED, 1)
    h = state.float()
    h = torch.exp(step * A.float()) * h + step * B.float()[:, None, :] * x.float()[..., None]
    state.copy_(h)
    y = torch.einsum("bdn,bn->bd", h, C.float())
    if D is not None:
        y = y + D.float() * x.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


register_reference("selective_scan", selective_scan_ref)
register_reference("selective_state_update", selective_state_update_ref)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan on the active backend; same contract as :func:`selective_scan_ref`."""
    fn = implementation("selective_scan", u.device.type)
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decode step on the active backend; same contract as :func:`selective_state_update_ref`."""
    fn = implementation("selective_state_update", x.device.type)
    return fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
