"""Weight-only int8 quantisation for CPU decode: ``quantize_(model, "int8")``.

Why: decoding one token reads every weight once, so it is bound by memory bandwidth, not
arithmetic. Storing weights as int8 with one fp32 scale per output channel reads ~4x fewer
bytes than fp32 (2x fewer than bf16); the kernel (``model.kernels.int8_linear``) widens int8 to
fp32 in registers, and activations stay in the model's dtype.

Scheme: symmetric, per output row: ``scale = max|W_row| / 127``, ``W8 = round(W / scale)``,
so every weight is off by at most ``scale / 2``.

What is quantised (in place):
- every ``nn.Linear`` except those whose weights the Mamba mixer reads directly inside its
  fused kernels (``x_proj``, ``dt_proj``: small, (R+2N) x ED and ED x R) and MoE routers (a few
  rows; a rounding there could flip the top-k choice of experts);
- the MoE expert stacks (3-D ``gate_proj``/``up_proj``/``down_proj`` parameters), as
  :class:`QuantExperts`, whose ``linear(x, e)`` the MoE block calls for expert ``e``.
Embeddings, norms and the SSM parameters stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from model import kernels

MODES = ("int8", "none")
KEEP_LINEAR = ("x_proj", "dt_proj", "router")
EXPERT_STACKS = ("gate_proj", "up_proj", "down_proj")


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., out, in) float weight -> (int8 weight, fp32 scale (..., out)), per output row."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=-1).clamp_min(1e-12) / 127.0
    w8 = torch.round(w / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return w8, scale


class QuantLinear(nn.Module):
    """Drop-in for ``nn.Linear`` with an int8 weight and per-output-channel fp32 scales."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias)
        q.weight_int8, q.scale = quantize_int8(linear.weight)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.int8_linear(x, self.weight_int8, self.scale, self.bias)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight this layer computes with (W8 * scale)."""
        return self.weight_int8.float() * self.scale[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class QuantExperts(nn.Module):
    """A stack of E expert matrices (E, out, in) in int8, scales (E, out)."""

    def __init__(self, stack: torch.Tensor) -> None:
        super().__init__()
        w8, scale = quantize_int8(stack)
        self.register_buffer("weight_int8", w8)
        self.register_buffer("scale", scale)

    def linear(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """x (..., in) @ W[expert]^T -> (..., out), in x's dtype."""
        return kernels.int8_linear(x, self.weight_int8[expert], self.scale[expert], None)

    def extra_repr(self) -> str:
        experts, out_features, in_features = self.weight_int8.shape
        return f"experts={experts}, out_features={out_features}, in_features={in_features}, int8"


def quantize_(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Quantise ``model``'s weights in place (see the module docstring) and return it.

    ``mode`` is ``"int8"`` or ``"none"`` (a no-op, so callers can pass a CLI flag through).
    The original float weights are released unless something else (a tied embedding) holds them.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantisation {mode!r}; choose one of {MODES}")
    if mode == "none":
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name not in KEEP_LINEAR:
                setattr(module, name, QuantLinear.from_linear(child))
        for name in EXPERT_STACKS:
            stack = module._parameters.get(name)
            if stack is not None and stack.dim() == 3:
                del module._parameters[name]
                module.add_module(name, QuantExperts(stack))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total
