"""Weight-only quantisation for CPU decode: ``quantize_(model, "int8" | "int4" | "bf16")``.

Why: decoding one token reads every weight once, so it is bound by memory bandwidth, not
arithmetic. int8 weights read ~4x fewer bytes than fp32 (2x fewer than bf16), int4 ~6.4x; the
kernels (``model.kernels.int8_linear`` / ``int4_linear``) widen the integers to fp32 in
registers, and activations stay in the model's dtype.

Schemes (symmetric, every weight off by at most ``scale / 2``):
- int8: one scale per output row, ``scale = max|W_row| / 127``, ``W8 = round(W / scale)``;
- int4: asymmetric groups of 32 weights along the input, as GGUF's Q4_1: ``minimum =
  min(W_group)``, ``scale = (max - min) / 15``, ``q = round((W - minimum) / scale)`` in
  [0, 15], packed two per byte (layout: ``kernels.pack_int4``). A Q4_1 checkpoint dequantised
  at load is thereby re-quantised onto (nearly) its own grid. Layers whose input size is not a
  multiple of 32 fall back to int8.
- bf16: the weights rounded to bfloat16 (exact for a bf16 checkpoint, such as Jamba's), half
  the bytes of fp32. Activations and arithmetic stay in the model's dtype (fp32): the kernels
  widen the weights in registers (decode) or once per call before the BLAS matmul (prefill).
  Why not ``dtype=bfloat16``: on CPUs without AVX512-BF16 or AMX, PyTorch's bf16 matmul is
  emulated, 60-80x slower than fp32 (0.8-0.9 against 48-75 GFLOP/s on a 2-core AVX2 EPYC).

What is quantised (in place):
- every ``nn.Linear`` except those whose weights the Mamba mixer reads directly inside its
  fused kernels (``x_proj``, ``dt_proj``: small, (R+2N) x ED and ED x R) and MoE routers (a few
  rows; a rounding there could flip the top-k choice of experts);
- the MoE expert stacks (3-D ``gate_proj``/``up_proj``/``down_proj`` parameters), as
  :class:`QuantExperts`, whose ``linear(x, e)`` the MoE block calls for expert ``e``.
int8 and int4 replace those modules and stacks (:class:`QuantLinear`, :class:`QuantExperts`);
bf16 keeps them and replaces their weights. Embeddings, norms and the SSM parameters stay as
they are.

``model.load(..., quantize=...)`` quantises while it loads (:class:`LoadQuantizer`): each
projection as soon as its tensors are in, so the float model is never whole in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from model import kernels
from model.layers import drop_identity_caches

MODES = ("int8", "int4", "bf16", "none")
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
KEEP_LINEAR = ("x_proj", "dt_proj", "router")
EXPERT_STACKS = ("gate_proj", "up_proj", "down_proj")


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., out, in) float weight -> (int8 weight, fp32 scale (..., out)), per output row."""
    w = weight.detach()
    scale = torch.maximum(w.amax(dim=-1), -w.amin(dim=-1)).float().clamp_min(1e-12) / 127.0
    w8 = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    for rows in _row_blocks(w):
        q = torch.round(w[rows].float() / scale[rows].unsqueeze(-1)).clamp_(-127, 127)
        w8[rows] = q.to(torch.int8)
    return w8, scale


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float weight, in % 32 == 0 -> packed (out, in/2) uint8, scale and minimum
    (out, in/32) fp32."""
    w = weight.detach()
    groups = w.reshape(w.shape[0], -1, kernels.quant_linear.INT4_GROUP)  # (out, in/32, 32)
    minimum = groups.amin(dim=-1).float()
    scale = (groups.amax(dim=-1).float() - minimum).clamp_min(1e-12) / 15.0
    packed = torch.empty(w.shape[0], w.shape[1] // 2, dtype=torch.uint8, device=w.device)
    for rows in _row_blocks(w):
        q = torch.round((groups[rows].float() - minimum[rows, :, None]) / scale[rows, :, None])
        packed[rows] = kernels.pack_int4(q.clamp_(0, 15).reshape(-1, w.shape[1]))
    return packed, scale, minimum


def _row_blocks(weight: torch.Tensor, elements: int = 1 << 18) -> list[slice]:
    """Slices of ``weight``'s leading dimension of ~``elements`` values each: quantising block
    by block keeps the float temporaries at about a MiB, not several copies of a whole weight (a
    3B model's 670 MB embedding-sized head would otherwise briefly need 2-3 GB more)."""
    step = max(1, elements // max(1, math.prod(weight.shape[1:])))
    return [slice(i, i + step) for i in range(0, weight.shape[0], step)]


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Without it PyTorch's
    bf16 matmul is emulated: measured 0.8-0.9 GFLOP/s on a 2-core AVX2 EPYC against 48-75 in
    fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in _NATIVE_BF16_FLAGS)


def _int4_ok(in_features: int) -> bool:
    return in_features % kernels.quant_linear.INT4_GROUP == 0


class QuantLinear(nn.Module):
    """Drop-in for ``nn.Linear`` with an int8 or packed int4 weight and fp32 scales."""

    def __init__(self, linear: nn.Linear, bits: int = 8) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.bits = bits
        if bits == 4:
            qweight, scale, minimum = quantize_int4(linear.weight)
            self.register_buffer("minimum", minimum)
        else:
            qweight, scale = quantize_int8(linear.weight)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8) -> QuantLinear:
        return cls(linear, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 4:
            return kernels.int4_linear(x, self.qweight, self.scale, self.minimum, self.bias)
        return kernels.int8_linear(x, self.qweight, self.scale, self.bias)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight this layer computes with."""
        if self.bits == 4:
            return kernels.dequantize_int4(self.qweight, self.scale, self.minimum)
        return kernels.dequantize_int8(self.qweight, self.scale)

    def prefill_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, x̂) in x's dtype: the dequantised weight and the activations rounded as this
        layer's kernels round them (x itself for int8 rows that are not whole blocks of 32),
        for a caller that runs the prefill matmul in its own layout (the Mamba mixer's
        ``W @ x̂^T``). ``x̂ @ W^T + bias`` is what :meth:`forward` computes."""
        weight = self.dequantize().to(x.dtype)
        if x.shape[-1] % kernels.quant_linear.ACT_BLOCK != 0:  # int8 only: 4-bit needs blocks
            return weight, x
        return weight, kernels.quantize_activations(x).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}"


class QuantExperts(nn.Module):
    """A stack of E expert matrices (E, out, in), each quantised like :class:`QuantLinear`."""

    def __init__(self, stack: torch.Tensor, bits: int = 8) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            QuantLinear(_as_linear(stack[e]), bits) for e in range(stack.shape[0])
        )

    def linear(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """x (..., in) @ W[expert]^T -> (..., out), in x's dtype."""
        return self.experts[expert](x)


def _as_linear(weight: torch.Tensor) -> nn.Linear:
    """A bias-free nn.Linear view of an (out, in) tensor, without copying it."""
    linear = nn.Linear(1, 1, bias=False, device="meta")
    linear.in_features, linear.out_features = weight.shape[1], weight.shape[0]
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return linear


def quantize_(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Quantise ``model``'s weights in place (see the module docstring) and return it.

    ``mode`` is ``"int8"``, ``"int4"``, ``"bf16"`` or ``"none"`` (a no-op, so callers can pass
    a CLI flag through). The original float weights are released unless something else (a
    tied embedding) holds them.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantisation {mode!r}; choose one of {MODES}")
    if mode == "none":
        return model
    drop_identity_caches(model)  # fused projections and cached decode arguments hold the floats
    for module, name, _ in list(_quantisable(model)):
        _quantize_one(module, name, mode)
    return model


def _quantize_one(module: nn.Module, name: str, mode: str) -> None:
    """Quantise ``module``'s child Linear or expert stack ``name`` (one of ``_quantisable``'s)."""
    target = getattr(module, name)
    if mode == "bf16":  # the same modules, bf16 weights: every fp path still takes them
        if isinstance(target, nn.Linear):
            target.weight = _bf16(target.weight)
        else:
            setattr(module, name, _bf16(target))
    elif isinstance(target, nn.Linear):
        bits = 4 if mode == "int4" and _int4_ok(target.in_features) else 8
        setattr(module, name, QuantLinear(target, bits))
    else:
        bits = 4 if mode == "int4" and _int4_ok(target.shape[-1]) else 8
        del module._parameters[name]
        module.add_module(name, QuantExperts(target, bits))


class LoadQuantizer:
    """Quantises a model while a loader fills it, each projection as soon as it is complete.

    So loading with ``quantize`` never holds the whole float model: the peak is the quantised
    model plus the float tensors of the projections still being filled, not the float model
    (12 GB in fp32 for a 3B model whose int8 form is 3 GB). The result equals loading in float
    and calling :func:`quantize_` after. Built on the model's skeleton (its parameters may be
    on the meta device); the loader calls :meth:`filled` with each parameter's name once it
    holds its final tensor, and :meth:`finish` at the end for what was never loaded (a tied
    ``lm_head`` that shares the embedding).
    """

    def __init__(self, model: nn.Module, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown quantisation {mode!r}; choose one of {MODES}")
        self.model, self.mode = model, mode
        self._waiting: dict[str, set[str]] = {}  # owner.name -> parameter names not yet filled
        self._owner_of: dict[str, str] = {}  # parameter name -> owner.name
        if mode == "none":
            return
        prefix = {id(m): n for n, m in model.named_modules()}
        for module, name, target in _quantisable(model):
            key = f"{prefix[id(module)]}.{name}".lstrip(".")
            params = ([f"{key}.{leaf}" for leaf, _ in target.named_parameters()]
                      if isinstance(target, nn.Module) else [key])
            self._waiting[key] = set(params)
            self._owner_of.update(dict.fromkeys(params, key))

    def filled(self, param: str) -> None:
        """``param`` (a name of ``model.named_parameters()``) holds its final tensor now."""
        key = self._owner_of.pop(param, None)
        if key is None:
            return
        waiting = self._waiting[key]
        waiting.discard(param)
        if not waiting:
            self._quantise(key)

    def finish(self) -> None:
        """Quantise what was never filled: a tied ``lm_head``, which the loader points at the
        embedding after every tensor is in."""
        for key in list(self._waiting):
            self._quantise(key)

    def _quantise(self, key: str) -> None:
        del self._waiting[key]
        owner, _, name = key.rpartition(".")
        _quantize_one(self.model.get_submodule(owner), name, self.mode)


def _quantisable(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Linear | torch.Tensor]]:
    """(owner, name, ``nn.Linear`` or 3-D expert stack) of everything ``quantize_`` quantises."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name not in KEEP_LINEAR:
                yield module, name, child
        for name in EXPERT_STACKS:
            stack = module._parameters.get(name)
            if stack is not None and stack.dim() == 3:
                yield module, name, stack


def _bf16(weight: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(weight.detach().to(torch.bfloat16).contiguous(), requires_grad=False)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total
