"""A whole Llama-family decoder layer for one decode step, as one op.

    h (B, 1, D) fp32 -> h + attention + MLP, both pre-norm:
        x = rms_norm(h, attn_norm) ; q|k|v = x @ Wqkv^T ; h = h + attention_decode(q, k, v) @ Wo^T
        x = rms_norm(h, ffn_norm)  ; g|u = x @ Wgu^T   ; h = h + (silu(g) * u) @ Wdown^T

Each projection is a list ``[weight, scale, minimum, bias]`` (absent entries None), in the
formats of ``model.quant``: an fp32 or bf16 weight (N, K); int8 (N, K) with a scale per row; packed
4-bit (N, K/2) uint8 with scale and minimum (N, K/32). q|k|v and g|u are the fused projections
of ``model.layers.fused`` (outputs concatenated in that order). ``k_cache``/``v_cache``
(B, Hkv, S, hd) get the new token at slot ``start``; cos/sin (B, 1, hd) or None as in
:mod:`model.kernels.attention_decode`. Returns the new h (the input is not modified).

Why an op: in PyTorch one layer's decode step is about fifteen Python-level calls (norms,
projections, attention, activation, residual adds), each paying 5-15 us of module and dispatch
overhead around a few tens of microseconds of matvec; a 30-layer model lost ~3.5 ms a token to
it. The C++ op runs the same kernels back to back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.kernels.attention_decode import attention_decode_ref
from model.kernels.dispatch import implementation, register_reference
from model.kernels.linear import linear_ref
from model.kernels.quant_linear import int4_linear_ref, int8_linear_ref
from model.kernels.rms_norm import rms_norm_ref
from model.kernels.silu_mul import silu_mul_ref

Projection = Sequence[torch.Tensor | None]  # [weight, scale, minimum, bias]


def projection_ref(x: torch.Tensor, parts: Projection) -> torch.Tensor:
    """x @ W^T + bias for a projection in any of the formats above, by the linear references."""
    weight, scale, minimum, bias = parts
    assert weight is not None
    if weight.dtype == torch.int8:
        assert scale is not None
        return int8_linear_ref(x, weight, scale, bias)
    if weight.dtype == torch.uint8:
        assert scale is not None and minimum is not None
        return int4_linear_ref(x, weight, scale, minimum, bias)
    return linear_ref(x, weight, bias)


def decoder_layer_decode_ref(
    h: torch.Tensor,
    attn_norm: torch.Tensor,
    ffn_norm: torch.Tensor,
    eps: float,
    qkv: Projection,
    o: Projection,
    gate_up: Projection,
    down: Projection,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference: the layer from the other ops' references."""
    kv = k_cache.shape[1] * k_cache.shape[3]
    proj = projection_ref(rms_norm_ref(h, attn_norm, eps), qkv)
    q, k, v = proj.split([proj.shape[-1] - 2 * kv, kv, kv], dim=-1)
    h = h + projection_ref(attention_decode_ref(q, k, v, k_cache, v_cache, start, cos, sin), o)
    return h + projection_ref(silu_mul_ref(projection_ref(rms_norm_ref(h, ffn_norm, eps), gate_up)), down)


register_reference("decoder_layer_decode", decoder_layer_decode_ref)


def decoder_layer_decode(
    h: torch.Tensor,
    attn_norm: torch.Tensor,
    ffn_norm: torch.Tensor,
    eps: float,
    qkv: Projection,
    o: Projection,
    gate_up: Projection,
    down: Projection,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> torch.Tensor:
    """decoder_layer_decode on the active backend; same contract as the reference."""
    return implementation("decoder_layer_decode", h.device.type)(
        h, attn_norm, ffn_norm, eps, qkv, o, gate_up, down, k_cache, v_cache, start, cos, sin
    )
