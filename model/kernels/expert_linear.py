"""A linear layer per routed slot of a mixture of experts: ``y[s] = W[experts[s]] @ x[s]``.

Shapes: x (S, K), weights (E, N, K) the stacked expert weights (``model.layers.MoE``'s layout),
experts (S,) integer expert ids; y (S, N) in x's dtype.

Why an op: MoE decode picks each token's experts on the device. Running them as ``W[e] @ x``
with ``e`` a Python int means copying the ids to the host first, a sync per MoE layer and
token, which stalls the launch queue and cannot be recorded in a CUDA graph. This op reads the
ids where they are. The reference gathers the k experts' matrices (a copy); the Triton kernel
(``model.kernels.triton_expert``) reads each routed matrix once, in place.
"""

from __future__ import annotations

import torch

from model.kernels.dispatch import implementation, register_reference


def expert_linear_ref(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Reference: gather the routed matrices, then one batched matmul."""
    routed = weights.index_select(0, experts.reshape(-1))  # (S, N, K)
    return torch.bmm(routed, x[:, :, None].to(weights.dtype))[..., 0].to(x.dtype)


register_reference("expert_linear", expert_linear_ref)


def expert_linear(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """expert_linear on the active backend; same contract as :func:`expert_linear_ref`."""
    return implementation("expert_linear", x.device.type)(x, weights, experts)
