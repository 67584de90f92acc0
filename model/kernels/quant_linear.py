"""Quantised linear ops for CPU decode: int8 weights per output row, 4-bit per group of 32
(asymmetric, the Q4_1 scheme), with the activations quantised per block of 32.

int8: ``y = x̂ @ (W8 * scale)^T + bias``.

W8 is (N, K) int8 with one fp32 scale per output row (symmetric, per-channel: ``W ≈ W8 *
scale[:, None]``); x (..., K) in fp32 or bf16; y (..., N) in x's dtype. Decode reads every
weight once per token, so storing 1 byte instead of 4 is up to 4x less memory traffic.

``x̂`` is x rounded to int8 per block of 32 values along K (symmetric, scale = max|x| / 127,
GGUF's Q8_0 activations; :func:`quantize_activations`): with both operands integers the fast
backend does each block's dot product in integer SIMD instructions, which keeps the kernel
bound by memory rather than by converting weights to floats. The relative error this adds to a
block is at most 1/254 of its largest value. When K is not a multiple of 32 (int8 only; 4-bit
needs it anyway), activations stay as they are. Every path (reference, C++ matvec, the
dequantise-and-matmul prefill path) computes with the same x̂, so decode and prefill agree.
"""

from __future__ import annotations

import torch

from model.kernels.dispatch import implementation, register_reference

ACT_BLOCK = 32  # activation values per quantisation block


def quantize_activations_ref(x: torch.Tensor) -> torch.Tensor:
    """x̂: x (..., K) in fp32, rounded to int8 per block of 32 along K and scaled back.

    ``scale = max|x_block| / 127``, ``x̂ = round(x / scale) * scale`` (round half to even; an
    all-zero block stays zero). K must be a multiple of 32.
    """
    blocks = x.float().reshape(*x.shape[:-1], -1, ACT_BLOCK)  # (..., K/32, 32)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(blocks / safe).clamp_(-127, 127)
    return (q * scale).reshape(x.shape)


register_reference("quantize_activations", quantize_activations_ref)


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x̂ on the active backend (the prefill path of the quantised linears); same contract as
    :func:`quantize_activations_ref`, bit for bit."""
    return implementation("quantize_activations", x.device.type)(x)


def dequantize_int8_ref(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 weight, (N,) scale -> the (N, K) fp32 weight ``W8 * scale``."""
    return weight.float() * scale.float()[:, None]


register_reference("dequantize_int8", dequantize_int8_ref)


def dequantize_int8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """:func:`dequantize_int8_ref` on the active backend, bit for bit."""
    return implementation("dequantize_int8", weight.device.type)(weight, scale)


def int8_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference: x̂ (x itself when K % 32 != 0) times the dequantised weight, in fp32;
    returns x's dtype."""
    w = dequantize_int8_ref(weight, scale)  # (N, K)
    xq = quantize_activations_ref(x) if x.shape[-1] % ACT_BLOCK == 0 else x.float()
    y = xq @ w.t()
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


def dequantize_int4_ref(
    packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor
) -> torch.Tensor:
    """(N, K/2) packed nibbles, (N, K/32) scale and minimum -> the (N, K) fp32 weight."""
    q = unpack_int4(packed).float()
    return q * scale.float().repeat_interleave(INT4_GROUP, 1) + minimum.float().repeat_interleave(
        INT4_GROUP, 1
    )


register_reference("dequantize_int4", dequantize_int4_ref)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    """:func:`dequantize_int4_ref` on the active backend, bit for bit."""
    return implementation("dequantize_int4", packed.device.type)(packed, scale, minimum)


def int4_linear_ref(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    minimum: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference 4-bit linear: x̂ times the dequantised weight, in fp32; returns x's dtype.

    Asymmetric groups of 32 along K, like GGUF's Q4_1: ``w = q * scale + minimum``, q in
    [0, 15]. packed (N, K/2) uint8: in each group, byte j holds q[j] in its low nibble and
    q[j + 16] in its high nibble; scale, minimum (N, K/32) fp32.
    """
    y = quantize_activations_ref(x) @ dequantize_int4_ref(packed, scale, minimum).t()
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
