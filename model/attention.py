"""Grouped-query causal self-attention with optional RoPE, writing into a preallocated KV cache.

Shape letters as in ``model/layers.py`` (B, L, T, H, Hkv, hd). Jamba's attention has no
positional encoding at all; Llama-family models rotate q and k with RoPE (the Hugging Face
"rotate_half" convention, so checkpoints need no permutation). The inputs that are the same for
every attention layer of one forward call (RoPE cos/sin, the mask) are built once per call in
``AttentionInputs`` rather than per layer.

Decode does not re-materialise the cache: new k/v are written into their slots and
``scaled_dot_product_attention`` reads the used slice ``[:, :, :start+L]`` of the buffer, with
``enable_gqa`` so the Hkv heads are not repeated H/Hkv times in memory. A plain one-token step
(no padding, no sliding window in the way) is one ``kernels.attention_decode`` op instead. The
q/k/v projections run as one fused matmul (``model.layers.fused``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model import kernels
from model.cache import KVState
from model.config import ModelConfig
from model.layers import Linear, fused


@dataclass
class AttentionInputs:
    """Per-call inputs shared by all attention layers."""

    start: int  # tokens already in the cache before this call (0 without a cache)
    rope: tuple[torch.Tensor, torch.Tensor] | None  # cos, sin: (B, L, hd) in the model dtype
    mask: torch.Tensor | None  # (B or 1, 1, L, T) bool, True = may attend; None with is_causal
    # Plain causal: query i (at slot start+i) attends slots 0..start+i, nothing else in the way
    # (kernels.causal_attention); with start == 0 that is SDPA's is_causal.
    is_causal: bool
    # A decode step whose cache slot is a device tensor (1,) long instead of ``start`` (what a
    # CUDA graph replays, see model.cuda_graph): K/V are written at that slot and attention
    # runs over ALL max_len slots of the cache under ``mask`` (B, 1, 1, max_len).
    slot: torch.Tensor | None = None


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies (hd/2,) fp32, with "linear" or "llama3" scaling when configured."""
    assert config.rope_theta is not None
    dim = config.head_dim
    inv_freq = 1.0 / (
        config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    )
    scaling: dict[str, Any] = config.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


def rope_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (B, L, hd) for integer positions (B, L), computed in fp32."""
    freqs = positions[..., None].float() * inv_freq  # (B, L, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, L, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def causal_mask(
    start: int, length: int, key_real: torch.Tensor | None, window: int | None,
    device: torch.device,
) -> tuple[torch.Tensor | None, bool]:
    """The attention mask for ``length`` queries at slots start.. over T = start+length keys.

    Returns ``(mask, is_causal)``; the mask is None for the common unpadded prefill (then
    ``is_causal``, see ``AttentionInputs``) and decode, so those paths build nothing.
    ``key_real`` (B, T) marks real tokens; a padded key is never attended. Every query may
    attend to itself, so a padded query (whose earlier keys are all padding) gets a finite,
    ignored output instead of NaN that would poison the Mamba layers after it.
    """
    total = start + length
    if key_real is None and (window is None or window >= total):
        return None, length > 1
    q_pos = torch.arange(start, total, device=device)[:, None]  # (L, 1)
    k_pos = torch.arange(total, device=device)[None, :]  # (1, T)
    allowed = k_pos <= q_pos  # (L, T)
    if window is not None:
        allowed = allowed & (k_pos > q_pos - window)
    mask = allowed[None, None]  # (1, 1, L, T)
    if key_real is not None:
        mask = (mask & key_real[:, None, None, :]) | (k_pos == q_pos)[None, None]  # (B, 1, L, T)
    return mask, False


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = hd = config.head_dim
        d = config.hidden_size
        qkv_bias = config.attention_bias
        self.q_proj = Linear(d, self.num_heads * hd, bias=qkv_bias)
        self.k_proj = Linear(d, self.num_kv_heads * hd, bias=qkv_bias)
        self.v_proj = Linear(d, self.num_kv_heads * hd, bias=qkv_bias)
        self.o_proj = Linear(self.num_heads * hd, d, bias=config.attention_out_bias)

    def forward(
        self, x: torch.Tensor, inputs: AttentionInputs, kv: KVState | None
    ) -> torch.Tensor:
        b, length, _ = x.shape
        hd = self.head_dim
        qkv = fused(self, ("q_proj", "k_proj", "v_proj"))
        if qkv is not None:
            sizes = (self.num_heads * hd, self.num_kv_heads * hd, self.num_kv_heads * hd)
            q, k, v = qkv(x).split(sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if inputs.slot is not None:
            assert kv is not None and length == 1 and inputs.mask is not None
            return self.o_proj(self._decode_at_slot(q, k, v, inputs, kv))  # (B, 1, D)
        if kv is not None and length == 1 and inputs.mask is None and not inputs.is_causal:
            # A plain decode step: RoPE, the cache write and attention in one op.
            cos, sin = inputs.rope if inputs.rope is not None else (None, None)
            out = kernels.attention_decode(q, k, v, kv.k, kv.v, inputs.start, cos, sin)
            return self.o_proj(out)  # (B, 1, D)
        q = q.reshape(b, length, self.num_heads, hd)  # (B, L, H, hd)
        k = k.reshape(b, length, self.num_kv_heads, hd)  # (B, L, Hkv, hd)
        v = v.reshape(b, length, self.num_kv_heads, hd)
        if inputs.rope is not None:
            cos, sin = inputs.rope
            q, k = kernels.rope(q, cos, sin), kernels.rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, L, hd)
        if kv is not None:
            end = inputs.start + length
            kv.k[:, :, inputs.start : end] = k
            kv.v[:, :, inputs.start : end] = v
            # (B, Hkv, T, hd): views, no copy, unless the cache is kept in a lower precision
            k, v = kv.k[:, :, :end].to(q.dtype), kv.v[:, :, :end].to(q.dtype)
        with kernels.sdpa_backends(q):
            if inputs.is_causal:  # also a chunk after cached tokens: no mask tensor
                out = kernels.causal_attention(q, k, v)  # (B, H, L, hd)
            else:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=inputs.mask, enable_gqa=self.num_heads != self.num_kv_heads,
                )  # (B, H, L, hd)
        return self.o_proj(out.transpose(1, 2).reshape(b, length, self.num_heads * hd))

    def _decode_at_slot(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: AttentionInputs,
        kv: KVState,
    ) -> torch.Tensor:
        """One token per row with fixed shapes and no host sync (see ``AttentionInputs.slot``):
        RoPE, the K/V write at ``inputs.slot`` and attention over every cache slot under
        ``inputs.mask``. q (B, 1, H*hd), k and v (B, 1, Hkv*hd) -> (B, 1, H*hd)."""
        assert inputs.slot is not None
        b, hd = q.shape[0], self.head_dim
        q = q.reshape(b, 1, self.num_heads, hd)
        k = k.reshape(b, 1, self.num_kv_heads, hd)
        v = v.reshape(b, 1, self.num_kv_heads, hd)
        if inputs.rope is not None:
            cos, sin = inputs.rope
            q, k = kernels.rope(q, cos, sin), kernels.rope(k, cos, sin)
        kv.k.index_copy_(2, inputs.slot, k.transpose(1, 2).to(kv.k.dtype))
        kv.v.index_copy_(2, inputs.slot, v.transpose(1, 2).to(kv.v.dtype))
        with kernels.sdpa_backends(q):
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), kv.k.to(q.dtype), kv.v.to(q.dtype), attn_mask=inputs.mask,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )  # (B, H, 1, hd)
        return out.transpose(1, 2).reshape(b, 1, self.num_heads * hd)
