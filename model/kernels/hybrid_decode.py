"""Jamba's other decode sublayers as one op each: the Mamba mixer half, the MoE half, and the
dense MLP half of a Mamba layer.

    mamba_mixer_decode: h (B, 1, D) fp32 -> h + out_proj(y), where
        x|z = in_proj(rms_norm(h, norm)) ; y = mamba_decode_step(x, z, conv_state, ssm_state, ...)
        (both states updated IN PLACE; see :mod:`model.kernels.mamba_decode` for the step).
    moe_decode: h (B, 1, D) fp32 -> h + sum_{e in top_k(p)} p[e] * down_e(silu(gate_e(x)) * up_e(x)),
        where x = rms_norm(h, norm) and p = softmax(x @ router^T) in fp32 over ALL E experts,
        not renormalised over the top k (Jamba's router); slots in descending p. (Exactly tied
        probabilities may route to either expert, as with ``torch.topk``.)
    mlp_decode: h (B, 1, D) fp32 -> h + down(silu(g) * u), where g|u = gate_up(rms_norm(h, norm))
        (the fused gate|up projection of ``model.layers.fused``).

Projections are lists ``[weight, scale, minimum, bias]`` as in :mod:`model.kernels.decoder_layer`
(fp32, bf16, int8 or packed 4-bit); an expert stack is one flat list of 4 * E such entries, expert 0
first. The router is an fp32 (E, D) weight. Both return the new h (the input is not modified).

Why ops: with :func:`decoder_layer_decode` for the attention layers, a Jamba decode step becomes
two C++ calls per layer instead of ~15-25 module and dispatch calls, each 5-15 us around matvecs
of a few hundred microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from model.kernels.decoder_layer import Projection, projection_ref
from model.kernels.dispatch import implementation, register_reference
from model.kernels.mamba_decode import mamba_decode_step_ref
from model.kernels.rms_norm import rms_norm_ref
from model.kernels.silu_mul import silu_mul_ref


def mamba_mixer_decode_ref(
    h: torch.Tensor,
    norm: torch.Tensor,
    eps: float,
    in_proj: Projection,
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
    out_proj: Projection,
) -> torch.Tensor:
    """Reference: the mixer half from the other ops' references."""
    xz = projection_ref(rms_norm_ref(h, norm, eps), in_proj)[:, 0]  # (B, 2ED)
    x, z = xz.chunk(2, dim=-1)
    y = mamba_decode_step_ref(
        x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
        dt_proj_bias, A, D, dt_norm_weight, b_norm_weight, c_norm_weight, eps,
    )
    return h + projection_ref(y[:, None, :], out_proj)


def moe_decode_ref(
    h: torch.Tensor,
    norm: torch.Tensor,
    eps: float,
    router: torch.Tensor,
    top_k: int,
    gate: Sequence[torch.Tensor | None],
    up: Sequence[torch.Tensor | None],
    down: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    """Reference: the MoE half, one batch row and one routed expert at a time."""
    x = rms_norm_ref(h, norm, eps)[:, 0]  # (B, D)
    probs = torch.softmax((x @ router.t()).float(), dim=-1)  # (B, E)
    rows = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        out = torch.zeros_like(xb)
        weights, experts = torch.topk(probs[b], top_k)
        for weight, e in zip(weights.tolist(), experts.tolist(), strict=True):
            hidden = F.silu(projection_ref(xb, gate[4 * e : 4 * e + 4])) * projection_ref(
                xb, up[4 * e : 4 * e + 4]
            )
            out = out + projection_ref(hidden, down[4 * e : 4 * e + 4]) * weight
        rows.append(out)
    return h + torch.cat(rows)[:, None, :]


def mlp_decode_ref(
    h: torch.Tensor, norm: torch.Tensor, eps: float, gate_up: Projection, down: Projection
) -> torch.Tensor:
    """Reference: the MLP half from the other ops' references."""
    x = projection_ref(rms_norm_ref(h, norm, eps), gate_up)
    return h + projection_ref(silu_mul_ref(x), down)


register_reference("mamba_mixer_decode", mamba_mixer_decode_ref)
register_reference("moe_decode", moe_decode_ref)
register_reference("mlp_decode", mlp_decode_ref)


def mamba_mixer_decode(
    h: torch.Tensor,
    norm: torch.Tensor,
    eps: float,
    in_proj: Projection,
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
    out_proj: Projection,
) -> torch.Tensor:
    """mamba_mixer_decode on the active backend; same contract as the reference."""
    return implementation("mamba_mixer_decode", h.device.type)(
        h, norm, eps, in_proj, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
        dt_proj_weight, dt_proj_bias, A, D, dt_norm_weight, b_norm_weight, c_norm_weight, out_proj,
    )


def moe_decode(
    h: torch.Tensor,
    norm: torch.Tensor,
    eps: float,
    router: torch.Tensor,
    top_k: int,
    gate: Sequence[torch.Tensor | None],
    up: Sequence[torch.Tensor | None],
    down: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    """moe_decode on the active backend; same contract as the reference."""
    return implementation("moe_decode", h.device.type)(h, norm, eps, router, top_k, gate, up, down)


def mlp_decode(
    h: torch.Tensor, norm: torch.Tensor, eps: float, gate_up: Projection, down: Projection
) -> torch.Tensor:
    """mlp_decode on the active backend; same contract as the reference."""
    return implementation("mlp_decode", h.device.type)(h, norm, eps, gate_up, down)
