"""Causal depthwise conv1d of the Mamba mixer: prefill (``causal_conv1d``) and one decode step
(``causal_conv1d_update``), each with its fp32 PyTorch reference beside the dispatcher.

Glossary: Bt batch, ED channels (d_inner), L sequence length, K kernel width (d_conv, 4 in Jamba).

Per channel d: ``y_t = bias[d] + sum_k weight[d, k] * x_{t - (K-1) + k}``, where inputs before
the sequence come from the conv state (the K-1 previous inputs; zeros at the start), then an
optional SiLU. The state holds *inputs*, not outputs, so a chunked prefill or a decode step
continues exactly where the previous call stopped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.kernels.dispatch import implementation, register_reference

_ACTIVATIONS = (None, "silu", "swish")


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return F.silu(y) if activation is not None else y


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference causal depthwise conv over a sequence, in fp32.

    Shapes: x (Bt, ED, L); weight (ED, K); bias (ED,); initial_state (Bt, ED, K-1), the K-1
    inputs before ``x`` (zeros when None). Returns ``(y, final_state)``: y (Bt, ED, L) in
    ``x.dtype`` and final_state (Bt, ED, K-1) in ``x.dtype``, the last K-1 inputs of
    ``concat(initial_state, x)`` (so it still holds part of the initial state when L < K-1).
    """
    batch, channels, length = x.shape
    width = weight.shape[-1]
    if initial_state is None:
        initial_state = x.new_zeros((batch, channels, width - 1))
    window = torch.cat([initial_state.float(), x.float()], dim=-1)  # (Bt, ED, K-1+L)
    w = weight.float()
    y = window.new_zeros((batch, channels, length))
    for k in range(width):
        y += w[:, k, None] * window[:, :, k : k + length]
    if bias is not None:
        y += bias.float()[:, None]
    final_state = window[:, :, window.shape[-1] - (width - 1) :]
    return _activate(y, activation).to(x.dtype), final_state.to(x.dtype)


def causal_conv1d_update_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Reference single decode step; ``conv_state`` is updated IN PLACE.

    Shapes: x (Bt, ED); conv_state (Bt, ED, S) with S >= K-1 (K-1 in this engine; Hugging Face
    keeps S = K, which also works: the conv reads the last K entries of ``concat(state, x)`` and
    the state keeps the last S). Returns y (Bt, ED) in ``x.dtype``.
    """
    width = weight.shape[-1]
    size = conv_state.shape[-1]
    assert size >= width - 1, "conv_state must hold at least K-1 inputs"
    window = torch.cat([conv_state.float(), x.float()[..., None]], dim=-1)  # (Bt, ED, S+1)
    y = (window[..., -width:] * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    conv_state.copy_(window[..., -size:])
    return _activate(y, activation).to(x.dtype)


register_reference("causal_conv1d", causal_conv1d_ref)
register_reference("causal_conv1d_update", causal_conv1d_update_ref)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal conv on the active backend; same contract as :func:`causal_conv1d_ref`."""
    fn = implementation("causal_conv1d", x.device.type)
    return fn(x, weight, bias, initial_state, activation)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """One conv decode step on the active backend; same contract as :func:`causal_conv1d_update_ref`."""
    fn = implementation("causal_conv1d_update", x.device.type)
    return fn(x, conv_state, weight, bias, activation)
