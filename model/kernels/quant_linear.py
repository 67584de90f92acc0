"""Weight-only quantised linear ops for CPU decode: int8 per output row, 4-bit per group of 32
(asymmetric, the Q4_1 scheme).

int8: ``y = x @ (W8 * scale)^T + bias``.

W8 is (N, K) int8 with one fp32 scale per output row (symmetric, per-channel: ``W ≈ W8 *
scale[:, None]``); x (..., K) in fp32 or bf16; y (..., N) in x's dtype. Decode reads every
weight once per token, so storing 1 byte instead of 4 is up to 4x less memory traffic; the
fast backend converts int8 to fp32 in registers. Activations are not quantised.
"""

from __future__ import annotations

import torch

from model.kernels.dispatch import implementation, register_reference


def int8_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference: dequantise to fp32 and multiply; returns x's dtype."""
    w = weight.float() * scale.float()[:, None]  # (N, K)
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


register_reference("int8_linear", int8_linear_ref)


def int8_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """int8 linear on the active backend; same contract as :func:`int8_linear_ref`."""
    return implementation("int8_linear", x.device.type)(x, weight, scale, bias)


INT4_GROUP = 32


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    """(N, K/2) packed nibbles, (N, K/32) scale and minimum -> the (N, K) fp32 weight."""
    q = unpack_int4(packed).float()
    return q * scale.float().repeat_interleave(INT4_GROUP, 1) + minimum.float().repeat_interleave(
        INT4_GROUP, 1
    )


def int4_linear_ref(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    minimum: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference 4-bit linear: dequantise to fp32 and multiply; returns x's dtype.

    Asymmetric groups of 32 along K, like GGUF's Q4_1: ``w = q * scale + minimum``, q in
    [0, 15]. packed (N, K/2) uint8: in each group, byte j holds q[j] in its low nibble and
    q[j + 16] in its high nibble; scale, minimum (N, K/32) fp32.
    """
    y = x.float() @ dequantize_int4(packed, scale, minimum).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 -> (N, K) uint8 values in [0, 15] (the layout of :func:`int4_linear_ref`)."""
    n_out = packed.shape[0]
    groups = packed.reshape(n_out, -1, INT4_GROUP // 2)  # (N, K/32, 16)
    return torch.cat([groups & 0x0F, groups >> 4], dim=-1).reshape(n_out, -1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) integers in [0, 15], K a multiple of 32 -> (N, K/2) uint8; inverse of unpack_int4."""
    n_out = q.shape[0]
    groups = q.to(torch.uint8).reshape(n_out, -1, INT4_GROUP)  # (N, K/32, 32)
    return (groups[..., : INT4_GROUP // 2] | (groups[..., INT4_GROUP // 2 :] << 4)).reshape(n_out, -1)


register_reference("int4_linear", int4_linear_ref)


def int4_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    minimum: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """4-bit linear on the active backend; same contract as :func:`int4_linear_ref`."""
    return implementation("int4_linear", x.device.type)(x, packed, scale, minimum, bias)
