"""Feed-forward building blocks shared by every model family: RMSNorm, SwiGLU MLP, Jamba's MoE.

Glossary of dimension letters (used in shape comments across model/):
    B  batch                      L  tokens in this call       T  tokens attended (cache + L)
    D  hidden_size (d_model)      I  intermediate_size         V  vocab_size
    H  attention heads            Hkv key/value heads          hd head_dim
    ED Mamba inner width (expand * D)   N  d_state   R  dt_rank   K  d_conv
    E  experts                    k  experts per token         S  tokens * k (routed slots)

The attention mixer lives in ``model/attention.py`` and the Mamba mixer in ``model/mamba.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import kernels


class Linear(nn.Linear):
    """``nn.Linear`` whose product runs through ``kernels.linear``: one-token inputs (decode)
    get the multi-threaded matvec kernel, longer ones the BLAS matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and cast back before the weight multiply.

    The cast-then-multiply order is the Hugging Face (Llama/Jamba) one; it matters in bf16.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)  # one op (model/kernels/rms_norm.py)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = Linear(dim, hidden, bias=bias)
        self.up_proj = Linear(dim, hidden, bias=bias)
        self.down_proj = Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _expert_linear(x: torch.Tensor, weights: torch.Tensor | nn.Module, e: int) -> torch.Tensor:
    """x @ W[e]^T for an (E, out, in) expert stack: a Parameter, or int8 experts (model.quant)."""
    if isinstance(weights, torch.Tensor):
        return kernels.linear(x, weights[e])
    return weights.linear(x, e)


class MoE(nn.Module):
    """Jamba's sparse MoE: softmax over ALL experts in fp32, top-k, no renormalisation.

    Experts are SwiGLU MLPs whose weights are stacked (``gate_proj`` (E, I, D), ``up_proj``
    (E, I, D), ``down_proj`` (E, D, I)), the layout GGUF uses; the loader stacks the per-expert
    Hugging Face tensors into them. Tokens are grouped per expert (one sort, one gather, one
    index_add) so the Python loop runs over experts, never over tokens.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.router = Linear(dim, num_experts, bias=False)
        self.gate_proj = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.up_proj = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.down_proj = nn.Parameter(torch.empty(num_experts, dim, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (B*L, D)
        probs = F.softmax(self.router(x).float(), dim=-1)  # (B*L, E) fp32
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # (B*L, k), no renormalisation
        weights = weights.to(x.dtype)
        if x.shape[0] == 1:  # one token (a decode step): its k experts directly, no grouping
            out = torch.zeros_like(x)
            for slot, e in enumerate(experts[0].tolist()):
                h = F.silu(_expert_linear(x, self.gate_proj, e)) * _expert_linear(x, self.up_proj, e)
                out = out + _expert_linear(h, self.down_proj, e) * weights[:, slot : slot + 1]
            return out.reshape(shape)

        flat_experts = experts.reshape(-1)  # (S,)
        order = torch.argsort(flat_experts, stable=True)  # slots grouped by expert
        counts = torch.bincount(flat_experts, minlength=self.num_experts).tolist()
        routed = x.index_select(0, order // self.top_k)  # (S, D), token of each sorted slot

        # Each expert writes its rows of one preallocated buffer: no torch.cat.
        y = torch.empty_like(routed)  # (S, D)
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            xe = routed[start : start + count]  # (count, D)
            h = F.silu(_expert_linear(xe, self.gate_proj, e)) * _expert_linear(xe, self.up_proj, e)
            if isinstance(self.down_proj, torch.Tensor):  # (count, I) -> (count, D)
                torch.mm(h, self.down_proj[e].t(), out=y[start : start + count])
            else:
                y[start : start + count] = _expert_linear(h, self.down_proj, e)
            start += count
        # Undo the sort with a gather (not a scatter-add): every token owns exactly k slots.
        y = y.index_select(0, torch.argsort(order)).view(-1, self.top_k, shape[-1])  # (B*L, k, D)
        out = (y * weights[..., None]).sum(dim=1)  # (B*L, D)
        return out.reshape(shape)
