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

import copy
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from model import kernels

T = TypeVar("T")


class Linear(nn.Linear):
    """``nn.Linear`` whose product runs through ``kernels.linear``: one-token inputs (decode)
    get the multi-threaded matvec kernel, longer ones the BLAS matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


def fused(owner: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    """``owner``'s sibling projections ``names`` (same input) as ONE module, or None.

    The fused module computes all of them at once: its output is theirs concatenated along
    the last dimension (split it with their ``out_features``). One big matvec instead of two or
    three small ones halves the per-token dispatch of a decode step and keeps both threads
    streaming. It is built on first use and rebuilt whenever one of the projections (or one
    of their tensors) is replaced, e.g. by ``model.quant.quantize_``, so it is never stale.

    Memory is not doubled: the projections' own weights become row views into the fused
    tensors, so a state dict still saves and loads them under their names (writes go into the
    fused copy). Works for any module whose tensors all have one row per output feature:
    ``nn.Linear`` (with or without bias) and ``model.quant.QuantLinear`` (int8 / int4, scales
    and minima per row). Returns None, and the caller runs the projections one by one, when
    they cannot be fused: different types, dtypes or bit widths, or weights that need
    gradients.
    """
    def parts() -> list[nn.Module]:
        return [getattr(owner, name) for name in names]

    # Kept in owner.__dict__, not as a registered submodule: model.modules(), state_dict and
    # quantize_ never see it.
    return cached_by_identity(owner, "_fused_" + names[0], parts, lambda: _concat_rows(parts()))


def cached_by_identity(owner: nn.Module, slot: str,
                       parts: Callable[[], Sequence[nn.Module | torch.Tensor]],
                       build: Callable[[], T | None]) -> T | None:
    """``build()``, kept in ``owner`` under ``slot`` and returned again while ``parts()`` are the
    same modules (or tensors) with the same weights (:func:`identity_key`). The key is taken after
    ``build`` ran, since building may rebind the parts' weights (fusing does); a None result
    is not kept (a refusal may not hold later, e.g. once gradients are switched off).

    The parts are only looked at again after something may have replaced them (see
    :func:`note_change`): checking ~240 parts per token cost a 300M Jamba 0.66 ms of its ~28 ms
    decode step. Replacing a module, parameter or buffer by assignment (``quantize_``, a loader,
    ``load_state_dict(assign=True)``) and converting a model or block (``.to()``, ``.half()``)
    are followed; swapping a single parameter's ``.data`` by hand is not (call
    :func:`note_change` after doing so).
    """
    caches = owner.__dict__.get(_CACHES)
    if caches is None:
        caches = owner.__dict__[_CACHES] = {}
    cached = caches.get(slot)
    epoch = _epoch
    if cached is not None:
        key, value, seen = cached
        if seen == epoch:
            return value  # type: ignore[no-any-return]
        current = parts()
        if same_identity(key, current):
            caches[slot] = (key, value, epoch)
            return value  # type: ignore[no-any-return]
    value = build()
    if value is not None:
        caches[slot] = (identity_key(parts()), value, epoch)
    return value


_CACHES = "_identity_caches"
_epoch = 0  # see note_change


def note_change(*_: object) -> None:
    """Say that modules or tensors may have been replaced: every :func:`cached_by_identity` value
    is checked against its parts again on its next use. Registered as torch's global module,
    parameter and buffer registration hook (any assignment on any module), and called when a
    ``CausalLM`` or ``Block`` converts its tensors."""
    global _epoch
    _epoch += 1


torch.nn.modules.module.register_module_module_registration_hook(note_change)
torch.nn.modules.module.register_module_parameter_registration_hook(note_change)
torch.nn.modules.module.register_module_buffer_registration_hook(note_change)


def drop_identity_caches(model: nn.Module) -> None:
    """Forget every :func:`cached_by_identity` value in ``model``, so that what they hold (e.g.
    fused fp32 weights about to be replaced by ``quantize_``) is released now, not at the next
    forward; they are rebuilt on use."""
    for module in model.modules():
        module.__dict__.pop(_CACHES, None)


def projection_tensors(module: nn.Module) -> list[torch.Tensor | None] | None:
    """``[weight, scale, minimum, bias]`` of a linear projection in the layouts the fused
    kernels read (an ``nn.Linear``, or a ``model.quant.QuantLinear`` with its integer weight),
    or None for anything else."""
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.Linear):
        return [module.weight, None, None, bias]
    qweight = getattr(module, "qweight", None)
    if isinstance(qweight, torch.Tensor):
        return [qweight, getattr(module, "scale", None), getattr(module, "minimum", None), bias]
    return None


def expert_projections(stack: torch.Tensor | nn.Module, experts: int) -> list[torch.Tensor | None] | None:
    """An MoE expert stack as one flat list of ``[weight, scale, minimum, bias]`` per expert (the
    layout of ``kernels.moe_decode``): a 3-D (E, out, in) parameter, or a
    ``model.quant.QuantExperts``; None for anything else."""
    if isinstance(stack, torch.Tensor):
        if stack.dim() != 3 or stack.shape[0] != experts:
            return None
        return [t for e in range(experts) for t in (stack[e], None, None, None)]
    modules = getattr(stack, "experts", None)
    if not isinstance(modules, nn.ModuleList) or len(modules) != experts:
        return None
    flat: list[torch.Tensor | None] = []
    for module in modules:
        parts = projection_tensors(module)
        if parts is None:
            return None
        flat += parts
    return flat


def identity_key(parts: Sequence[nn.Module | torch.Tensor]) -> tuple[object, ...]:
    """What a fused module depends on: each part, its first tensor (its weight; a tensor part is
    its own) and that tensor's memory. Replacing a module (quantize_), its weight (a loader) or the weight's data
    (``model.to(dtype or device)`` swaps ``param.data``) changes this; in-place writes
    (``load_state_dict``) go into the fused tensors and need not."""
    key: list[object] = []
    for p in parts:
        key += (p, *_first_tensor(p))
    return tuple(key)


def _first_tensor(module: nn.Module | torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """A module's first parameter (else buffer), or a tensor itself, and the address of its
    data (0 for none)."""
    if isinstance(module, torch.Tensor):
        return module, module.data_ptr()
    first = next(iter((module._parameters or module._buffers).values()), None)
    return first, 0 if first is None else first.data_ptr()


def same_identity(key: tuple[object, ...], parts: Sequence[nn.Module | torch.Tensor]) -> bool:
    """``identity_key(parts) == key`` (on every decode step: kept to a plain loop)."""
    if len(key) != 3 * len(parts):
        return False
    for i, p in enumerate(parts):
        first, address = _first_tensor(p)
        if key[3 * i] is not p or key[3 * i + 1] is not first or key[3 * i + 2] != address:
            return False
    return True


def _concat_rows(parts: list[nn.Module]) -> nn.Module | None:
    first = parts[0]
    kind = type(first)
    leaves = [{**p._parameters, **p._buffers} for p in parts]
    names = list(leaves[0])
    for part, tensors in zip(parts, leaves, strict=True):
        if type(part) is not kind or list(tensors) != names or part._modules:
            return None
        if getattr(part, "bits", None) != getattr(first, "bits", None):
            return None
        rows = getattr(part, "out_features", None)
        for name, t in tensors.items():
            ref = leaves[0][name]
            if t is None and ref is None:  # e.g. no bias on any of them
                continue
            if (
                t is None or ref is None or t.requires_grad or t.shape[0] != rows
                or t.dtype != ref.dtype or t.device != ref.device or t.shape[1:] != ref.shape[1:]
            ):
                return None
    module = copy.copy(first)  # same class and attributes; its own tensor tables below
    module._parameters, module._buffers, module._modules = {}, {}, {}
    module.out_features = sum(p.out_features for p in parts)
    with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable in any mode
        for name in names:
            is_param = name in first._parameters
            if leaves[0][name] is None:
                (module._parameters if is_param else module._buffers)[name] = None
                continue
            whole = torch.cat([t[name] for t in leaves], dim=0)
            if is_param:
                module._parameters[name] = nn.Parameter(whole, requires_grad=False)
            else:
                module._buffers[name] = whole
            row = 0
            for part in parts:
                view = whole[row : row + part.out_features]
                row += part.out_features
                setattr(part, name, nn.Parameter(view, requires_grad=False) if is_param else view)
    return module


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
        both = fused(self, ("gate_proj", "up_proj"))
        if both is not None:  # one projection to (..., 2I), one activation op
            return self.down_proj(kernels.silu_mul(both(x)))
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
        if x.device.type != "cpu" and x.shape[0] <= 16 and self._stacks_in(x.dtype):
            return self._routed_on_device(x, weights, experts).reshape(shape)
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
            if isinstance(self.down_proj, torch.Tensor) and self.down_proj.dtype == h.dtype:
                torch.mm(h, self.down_proj[e].t(), out=y[start : start + count])
            else:
                y[start : start + count] = _expert_linear(h, self.down_proj, e)
            start += count
        # Undo the sort with a gather (not a scatter-add): every token owns exactly k slots.
        # The inverse permutation by one scatter, not a second sort (on a GPU a sort of a
        # 512-token chunk's slots took ~28 us, a tenth of the MoE's prefill time).
        unsort = torch.empty_like(order)
        unsort[order] = torch.arange(order.numel(), device=order.device)
        y = y.index_select(0, unsort).view(-1, self.top_k, shape[-1])  # (B*L, k, D)
        out = (y * weights[..., None]).sum(dim=1)  # (B*L, D)
        return out.reshape(shape)

    def _stacks_in(self, dtype: torch.dtype) -> bool:
        """Whether the expert stacks are plain tensors of ``dtype`` (not quantised ones)."""
        return all(isinstance(w, torch.Tensor) and w.dtype == dtype
                   for w in (self.gate_proj, self.up_proj, self.down_proj))

    def _routed_on_device(
        self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor
    ) -> torch.Tensor:
        """The few tokens of a decode step on an accelerator: every routed slot through
        ``kernels.expert_linear``, which reads the expert ids on the device. The grouped path
        and the one-token path below copy them to the host (a sync per layer and step) and
        cannot run inside a CUDA graph. x (T, D), weights and experts (T, k) -> (T, D)."""
        slots = experts.reshape(-1)  # (S,)
        xs = x.repeat_interleave(self.top_k, dim=0)  # (S, D): slot s belongs to token s // k
        h = F.silu(kernels.expert_linear(xs, self.gate_proj, slots)) * kernels.expert_linear(
            xs, self.up_proj, slots)  # (S, I)
        y = kernels.expert_linear(h, self.down_proj, slots)  # (S, D)
        return (y.view(-1, self.top_k, x.shape[-1]) * weights[..., None]).sum(dim=1)
