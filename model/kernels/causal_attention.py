"""Causal grouped-query attention of a prompt chunk that continues a cached sequence, as one op.

Shapes (B batch, H query heads, Hkv key/value heads, hd head size, L new tokens, T = start + L
keys: the cached ones, then the chunk's own):
    q (B, H, L, hd); k, v (B, Hkv, T, hd); returns (B, H, L, hd) in q's dtype.

Query i sits at position ``start + i`` and attends keys ``0 .. start + i`` (the causal mask
aligned to the bottom-right corner; with ``start == 0`` it is SDPA's ``is_causal``). Query head
h reads key/value head ``h // (H / Hkv)``; scores are scaled by ``1 / sqrt(hd)``.

Why an op: a prompt is prefilled in chunks (``model.generate.PREFILL_CHUNK``), and every chunk
after the first attends the cache too. SDPA has no flag for that alignment, so the mask had to
be an (L, T) tensor, which SDPA converts to floats and adds to every head's scores. The CPU
version splits the keys instead: the cached prefix needs no mask at all, and a group's H/Hkv
query heads share one key head there, so they run as ONE head of (H/Hkv)·L queries over the
keys in place (longer query blocks, each key block read once per group); the chunk's own L keys
form a plain causal block. The two partial softmaxes are merged by their log-sum-exps.

One layer, a 512-token chunk, against SDPA with the mask (interleaved, median of 21, 2-core
EPYC): 1.02-1.08x after 512-1536 cached tokens, 1.24x (SmolLM2's 9/3 heads) and 1.32x (Jamba's
12/4) after 7680.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.kernels.dispatch import implementation, register_reference


def causal_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference: ``scaled_dot_product_attention`` with the bottom-right causal mask."""
    length, total = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if length == total:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    q_pos = torch.arange(total - length, total, device=q.device)[:, None]  # (L, 1)
    allowed = torch.arange(total, device=q.device)[None, :] <= q_pos  # (L, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=gqa)


register_reference("causal_attention", causal_attention_ref)


def causal_attention_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The CPU version (see the module docstring): prefix and causal block through PyTorch's
    CPU flash kernel, which also returns each row's log-sum-exp, merged by softmax weights."""
    flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    b, heads, length, hd = q.shape
    kv_heads, total = k.shape[1], k.shape[2]
    start = total - length
    if start == 0 or flash is None or heads % kv_heads:
        return causal_attention_ref(q, k, v)
    group = heads // kv_heads
    # The prefix: a group's heads stacked along the queries, one head over its shared keys.
    grouped = q.reshape(b, kv_heads, group * length, hd)
    out_prefix, lse_prefix = flash(grouped, k[:, :, :start], v[:, :, :start], 0.0, False)[:2]
    out_prefix = out_prefix.reshape(b, heads, length, hd)
    lse_prefix = lse_prefix.reshape(b, heads, length)
    # The chunk's own keys: a causal block (only L keys, so repeating them for GQA is cheap).
    k_own, v_own = k[:, :, start:], v[:, :, start:]
    if group > 1:
        k_own, v_own = k_own.repeat_interleave(group, 1), v_own.repeat_interleave(group, 1)
    out_own, lse_own = flash(q, k_own, v_own, 0.0, True)[:2]
    # softmax over both key sets = each part's softmax weighted by its share of the total mass
    weight = torch.sigmoid(lse_prefix - lse_own)[..., None]  # (B, H, L, 1) fp32
    if q.dtype == torch.float32:
        return torch.lerp(out_own, out_prefix, weight)
    return torch.lerp(out_own.float(), out_prefix.float(), weight).to(q.dtype)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """causal_attention on the active backend; same contract as :func:`causal_attention_ref`."""
    return implementation("causal_attention", q.device.type)(q, k, v)
