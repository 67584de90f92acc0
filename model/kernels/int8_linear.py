"""Weight-only int8 linear layer op (CPU decode): ``y = x @ (W8 * scale)^T + bias``.

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
