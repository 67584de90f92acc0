"""One decode step of causal grouped-query attention over a preallocated KV cache, as one op.

Shapes (B batch, H query heads, Hkv key/value heads, hd head size, S cache slots):
    q (B, 1, H*hd), k and v (B, 1, Hkv*hd)   the new token's projections, before RoPE
    k_cache, v_cache (B, Hkv, S, hd)          written in place at slot ``start``
    cos, sin (B, 1, hd) or None               RoPE tables (None: no positional encoding, Jamba)
    returns (B, 1, H*hd)

The op rotates q and k (the "rotate_half" convention of ``model.kernels.rope``), stores k and v
in slot ``start``, and attends over slots ``0..start``: query head h reads key/value head
``h // (H / Hkv)``, scores are scaled by ``1 / sqrt(hd)``. Only for the plain decode case: no
padding and no sliding window cutting into the keys (``model.attention`` checks).

Why an op: in PyTorch a decode step of one attention layer is about a dozen small ops (RoPE
for q and k, transposes, two cache writes, slicing, SDPA, a reshape), and the CPU flash
attention kernel alone costs ~85 us for a single query; one C++ call does it all in ~10-30 us.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from model.kernels.dispatch import implementation, register_reference
from model.kernels.rope import rope_ref


def sdpa_backends(q: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """``scaled_dot_product_attention``'s backends for ``q``: on CUDA all but cuDNN, which
    builds a new execution plan for every new key length, so every decode step paid ~46 ms for
    it on an H100 (the 300M Jamba pattern decoded at 11.7 tok/s with it, 38.9 without; prefill
    speed was the same). Flash, memory-efficient and math remain. Elsewhere, SDPA's choice."""
    if q.device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def attention_decode_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference: RoPE, the cache writes and ``scaled_dot_product_attention`` in PyTorch."""
    b, kv_heads, _, hd = k_cache.shape
    heads = q.shape[-1] // hd
    q, k, v = q.reshape(b, 1, heads, hd), k.reshape(b, 1, kv_heads, hd), v.reshape(b, 1, kv_heads, hd)
    if cos is not None:
        assert sin is not None
        q, k = rope_ref(q, cos, sin), rope_ref(k, cos, sin)
    k_cache[:, :, start] = k[:, 0]
    v_cache[:, :, start] = v[:, 0]
    with sdpa_backends(q):
        out = F.scaled_dot_product_attention(  # a half-precision cache is read widened to q's dtype
            q.transpose(1, 2), k_cache[:, :, : start + 1].to(q.dtype),
            v_cache[:, :, : start + 1].to(q.dtype), enable_gqa=heads != kv_heads,
        )  # (B, H, 1, hd)
    return out.transpose(1, 2).reshape(b, 1, heads * hd)


register_reference("attention_decode", attention_decode_ref)


def attention_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> torch.Tensor:
    """attention_decode on the active backend; same contract as :func:`attention_decode_ref`."""
    return implementation("attention_decode", q.device.type)(q, k, v, k_cache, v_cache, start, cos, sin)
