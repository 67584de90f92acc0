"""Jamba's Mamba mixer: Mamba-1 with RMSNorms on dt, B and C.

Shape letters as in ``model/layers.py`` (B, L, D, ED, N, R, K). The math (Hugging Face
``JambaMambaMixer`` is the numerical reference)::

    x, z   = split(in_proj(h))                     (B, ED, L) each
    u      = silu(causal_conv1d(x))                depthwise, width K, state = last K-1 inputs
    dt,B,C = split(x_proj(u), [R, N, N]); RMSNorm each
    delta  = dt_proj.weight @ dt                   bias added in fp32 inside the scan
    y      = selective_scan(u, delta, A=-exp(A_log), B, C, D, z=z, softplus)
    out    = out_proj(y)

All recurrences go through the ``model.kernels`` dispatchers (reference or fast backend). With a
cache, the conv and scan start from the cached states and leave their final states there, so
one prefill, a chunked prefill and token-by-token decode give the same numbers. A one-token step
uses the fused ``mamba_decode_step`` kernel (conv step .. scan step in one op).

Left padding: the input is zeroed at padded positions before in_proj, before the conv and after
it, so a pad contributes u = 0, hence B = C = 0 and dt·B·u = 0: the states stay exactly what
they were (zero, since left padding precedes every real token).
"""

from __future__ import annotations

import torch
from torch import nn

from model import kernels
from model.cache import MambaState
from model.config import ModelConfig
from model.layers import Linear, RMSNorm
from model.quant import QuantLinear


class MambaMixer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, ed = config.hidden_size, config.mamba_d_inner
        self.d_state = n = config.mamba_d_state
        self.dt_rank = r = config.mamba_dt_rank
        self.eps = config.rms_norm_eps
        self.in_proj = Linear(d, 2 * ed, bias=config.mamba_proj_bias)
        # Depthwise conv weight kept as (ED, K) (HF: Conv1d weight (ED, 1, K), squeezed at load).
        self.conv_weight = nn.Parameter(torch.empty(ed, config.mamba_d_conv))
        self.conv_bias = nn.Parameter(torch.empty(ed)) if config.mamba_conv_bias else None
        self.x_proj = Linear(ed, r + 2 * n, bias=False)
        self.dt_proj = Linear(r, ed, bias=True)
        self.A_log = nn.Parameter(torch.empty(ed, n))
        self.D = nn.Parameter(torch.empty(ed))
        self.out_proj = Linear(ed, d, bias=config.mamba_proj_bias)
        self.dt_layernorm = RMSNorm(r, config.rms_norm_eps)
        self.b_layernorm = RMSNorm(n, config.rms_norm_eps)
        self.c_layernorm = RMSNorm(n, config.rms_norm_eps)
        self._A_cache: torch.Tensor | None = None
        self._A_key: tuple[int, int, torch.device] | None = None

    def _A(self) -> torch.Tensor:
        """A = -exp(A_log) in fp32, computed once per A_log version instead of every call."""
        key = (self.A_log.data_ptr(), self.A_log._version, self.A_log.device)
        if self._A_key != key:
            self._A_cache = -torch.exp(self.A_log.detach().float())
            self._A_key = key
        assert self._A_cache is not None
        return self._A_cache

    def forward(
        self, h: torch.Tensor, pad: torch.Tensor | None, state: MambaState | None
    ) -> torch.Tensor:
        """h (B, L, D); pad (B, L) bool, True = real token, None = no padding in this call."""
        length = h.shape[1]
        keep = None if pad is None else pad[:, None, :].to(h.dtype)  # (B, 1, L)
        if pad is not None:
            h = h * pad[..., None].to(h.dtype)
        in_proj = self.in_proj
        operands = _prefill_operands(in_proj, h) if length > 1 else None
        if operands is not None:
            # W @ h^T lays x and z out as (B, ED, L) rows, the layout the kernels read. On the
            # 3-D h, ``@`` runs h @ W^T and then transposes the (L, 2ED) result in a copy; in
            # fp32, one bmm on the weight expanded over B writes that layout directly (the copy
            # was 6% of a 2048-token CPU prefill of the 300M Jamba). Through ``in_proj(h)``, x
            # and z came out strided by 2ED along L, and the conv and the scan read them 8x
            # and 1.4x slower (the same prefill in bf16 weights).
            weight, h_in = operands
            if h.dtype == torch.float32:
                xz = torch.bmm(weight.expand(h.shape[0], -1, -1), h_in.transpose(1, 2))
            else:
                xz = weight @ h_in.transpose(1, 2)  # (B, 2ED, L)
            if in_proj.bias is not None:
                xz = xz + in_proj.bias.to(h.dtype)[:, None]
        else:  # one token: the matvec kernels, (B, 1, 2ED) -> (B, 2ED, 1)
            xz = in_proj(h).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)  # (B, ED, L) each
        A = self._A()  # (ED, N) fp32

        if state is not None and length == 1 and pad is None:
            y = kernels.mamba_decode_step(
                x[..., 0], z[..., 0], state.conv, state.ssm, self.conv_weight, self.conv_bias,
                self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias, A, self.D,
                self.dt_layernorm.weight, self.b_layernorm.weight, self.c_layernorm.weight,
                self.eps,
            )  # (B, ED)
            return self.out_proj(y[:, None, :])  # (B, 1, D)

        if keep is not None:
            x = x * keep
        u, conv_final = kernels.causal_conv1d(
            x, self.conv_weight, self.conv_bias,
            initial_state=None if state is None else state.conv, activation="silu",
        )  # (B, ED, L)
        if keep is not None:
            u = u * keep
        dt, B, C = torch.split(
            self.x_proj(u.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1
        )  # (B, L, R), (B, L, N), (B, L, N)
        dt = self.dt_layernorm(dt)
        B = self.b_layernorm(B)
        C = self.c_layernorm(C)
        delta = self.dt_proj.weight @ dt.transpose(1, 2)  # (B, ED, L)
        y, ssm_final = kernels.selective_scan(
            u, delta, A, B.transpose(1, 2), C.transpose(1, 2), D=self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            initial_state=None if state is None else state.ssm,
        )  # (B, ED, L)
        if state is not None:
            state.conv.copy_(conv_final)
            state.ssm.copy_(ssm_final)
        return self.out_proj(y.transpose(1, 2).to(h.dtype))  # (B, L, D)


def _prefill_operands(
    proj: nn.Module, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W, h) in h's dtype for a prefill matmul that ``proj`` would run as ``h @ W^T``: float
    weights widened (``quantize="bf16"`` stores them narrower, as ``kernels.linear`` widens
    them), int8/int4 dequantised with the activations rounded as their kernels round them; None
    for a module with no such form."""
    if isinstance(proj, QuantLinear):
        return proj.prefill_operands(h)
    if isinstance(proj, nn.Linear) and proj.weight.is_floating_point():
        return proj.weight.to(h.dtype), h
    return None
