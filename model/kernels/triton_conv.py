"""Causal depthwise conv1d of the Mamba mixer in Triton: prefill with initial/final state
(``causal_conv1d``) and the one-step update with the conv state in place (``causal_conv1d_update``).

Glossary: Bt batch, ED channels (d_inner), L sequence length, K kernel width (d_conv, 4 in Jamba).

Same contracts as :func:`model.kernels.causal_conv1d_ref` / ``causal_conv1d_update_ref``:
``y_t = silu(bias + sum_k w[k] x_{t-(K-1)+k})`` with the inputs before the sequence taken from
the state (the K-1 previous inputs).

Prefill: one program computes a (BLOCK_D, BLOCK_L) tile of y. K is a compile-time constant; tap
k is one shifted (BLOCK_D, BLOCK_L) load of x (the K loads overlap and hit L1/L2, so x is read
from DRAM about once) plus, for the first K-1 columns of the sequence, a load from the initial
state; the accumulation, bias and SiLU are fp32 in registers. The programs of the first L tile
also write the final state, the last K-1 inputs of ``concat(initial_state, x)``.

Update: one program per (batch row, channel block) reads the state window, writes y and shifts
the window left by one with ``x`` appended. The shift reads entries that other threads of the
same program overwrite, so a barrier separates all reads from the writes.

STATUS: GPU-verified on an H100 (torch 2.11, Triton 3.6, 2026-11-22):
``pytest -m gpu tests/model/test_kernels_triton.py`` passes at real sizes in fp32/bf16/fp16, and ``python -m model.kernels.bench_triton`` times it
against the references and against mamba-ssm / causal-conv1d built from source in the same run
(numbers in that module's docstring). On the CPU the tests run it under ``TRITON_INTERPRET=1``.
Measured: causal_conv1d 0.36-1.3x causal-conv1d's CUDA kernel (0.5x on contiguous
bf16, level in fp32); the one-step update level with it or faster (1.0-3.7x, launch-bound).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.kernels.triton_scan import channel_major, empty_sequence_like

_ACTIVATIONS = (None, "silu", "swish")


# Sequence lengths vary call to call: no specialisation on L (its ==1 / %16 cases), so a new
# prompt length does not trigger a fresh compile.
@triton.jit(do_not_specialize=["length"])
def _causal_conv1d_kernel(
    x_ptr, w_ptr, bias_ptr, s0_ptr, y_ptr, sT_ptr,
    channels, length,
    s_x_b, s_x_d, s_x_l,
    s_w_d, s_w_k,
    s_bias,
    s_s0_b, s_s0_d, s_s0_k,
    s_y_b, s_y_d, s_y_l,
    s_sT_b, s_sT_d, s_sT_k,
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_STATE: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < channels
    # int64 row offsets and a 64-bit tile base pointer: ED * L or L * stride beyond 2**31 (long
    # contexts, (Bt, L, ED) storage seen through a transpose) cannot overflow 32-bit offsets.
    rows = offs_d.to(tl.int64)[:, None]
    x_row = x_ptr + pid_b * s_x_b + rows * s_x_d  # (BLOCK_D, 1)
    x_tile = x_row + (pid_l * BLOCK_L).to(tl.int64) * s_x_l
    s0_row = s0_ptr + pid_b * s_s0_b + rows * s_s0_d
    local = tl.arange(0, BLOCK_L)

    if HAS_BIAS:
        acc = tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(tl.float32)[:, None]
        acc = tl.broadcast_to(acc, [BLOCK_D, BLOCK_L])
    else:
        acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for k in tl.static_range(WIDTH):
        w = tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0).to(tl.float32)
        pos = offs_l - (WIDTH - 1) + k  # input position read by tap k; < 0 means the state
        in_x = (pos >= 0) & (pos < length)
        x_ptrs = x_tile + (local - (WIDTH - 1) + k)[None, :] * s_x_l
        xk = tl.load(x_ptrs, mask=mask_d[:, None] & in_x[None, :], other=0.0)
        xk = xk.to(tl.float32)
        if HAS_STATE:
            # state index of input position pos < 0 is pos + K - 1 (>= 0 as offs_l >= 0)
            in_s = (pos < 0) & (offs_l < length)
            sk = tl.load(
                s0_row + (pos + WIDTH - 1)[None, :] * s_s0_k,
                mask=mask_d[:, None] & in_s[None, :], other=0.0,
            )
            xk += sk.to(tl.float32)
        acc += w[:, None] * xk
    if SILU:
        acc = acc * tl.sigmoid(acc)
    mask_dl = mask_d[:, None] & (offs_l < length)[None, :]
    tl.store(
        y_ptr + pid_b * s_y_b + rows * s_y_d + offs_l.to(tl.int64)[None, :] * s_y_l, acc,
        mask=mask_dl,
    )

    if pid_l == 0:
        # final_state[j] = concat(initial_state, x)[L + j], j < K - 1
        j = tl.arange(0, BLOCK_S)
        src = (length + j - (WIDTH - 1)).to(tl.int64)  # position in x; < 0: the initial state
        mask_j = j < WIDTH - 1
        from_x = mask_d[:, None] & (mask_j & (src >= 0))[None, :]
        last = tl.load(x_row + src[None, :] * s_x_l, mask=from_x, other=0.0).to(tl.float32)
        if HAS_STATE:
            from_s = mask_d[:, None] & (mask_j & (src < 0))[None, :]
            s_ptrs = s0_row + (src + WIDTH - 1)[None, :] * s_s0_k
            last += tl.load(s_ptrs, mask=from_s, other=0.0).to(tl.float32)
        tl.store(
            sT_ptr + pid_b * s_sT_b + rows * s_sT_d + j[None, :] * s_sT_k,
            last, mask=mask_d[:, None] & mask_j[None, :],
        )


@triton.jit
def _causal_conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr,
    channels, state_len,
    s_x_b, s_x_d,
    s_st_b, s_st_d, s_st_k,
    s_w_d, s_w_k,
    s_bias,
    s_y_b, s_y_d,
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < channels
    st_base = state_ptr + pid_b * s_st_b + offs_d * s_st_d  # (BLOCK_D,)
    st_row = st_base[:, None]  # (BLOCK_D, 1)

    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0)
    # The window is concat(state, x), length S + 1; tap k reads window[S + 1 - K + k].
    w_last = tl.load(w_ptr + offs_d * s_w_d + (WIDTH - 1) * s_w_k, mask=mask_d, other=0.0)
    acc = w_last.to(tl.float32) * x.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(tl.float32)
    for k in tl.static_range(WIDTH - 1):
        w = tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0).to(tl.float32)
        sk = tl.load(st_base + (state_len + 1 - WIDTH + k) * s_st_k, mask=mask_d, other=0.0)
        acc += w * sk.to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)

    # Shift: new_state[j] = window[j + 1] = state[j + 1] for j < S - 1, x for j = S - 1.
    j = tl.arange(0, BLOCK_S)
    mask_j = j < state_len
    shifted = tl.load(
        st_row + (j + 1)[None, :] * s_st_k,
        mask=mask_d[:, None] & (j + 1 < state_len)[None, :], other=0.0,
    )
    shifted = tl.where((j == state_len - 1)[None, :], x[:, None].to(shifted.dtype), shifted)
    tl.debug_barrier()  # every read of the old state happens before any write
    tl.store(st_row + j[None, :] * s_st_k, shifted, mask=mask_d[:, None] & mask_j[None, :])
    tl.store(y_ptr + pid_b * s_y_b + offs_d * s_y_d, acc, mask=mask_d)


def _check_activation(activation: str | None) -> bool:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return activation is not None


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
    *,
    block_d: int | None = None,
    block_l: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv in Triton; same contract as :func:`model.kernels.causal_conv1d_ref`.

    Shapes: x (Bt, ED, L); weight (ED, K); bias (ED,); initial_state (Bt, ED, K-1) or None
    (zeros). Returns ``(y, final_state)``, both in ``x.dtype``: y (Bt, ED, L), final_state
    (Bt, ED, K-1). Arithmetic is fp32; strided inputs are fine.
    """
    silu = _check_activation(activation)
    batch, channels, length = x.shape
    width = weight.shape[-1]
    assert weight.shape == (channels, width), f"weight must be (ED, K), got {tuple(weight.shape)}"
    assert bias is None or bias.shape == (channels,), "bias must be (ED,)"
    assert initial_state is None or initial_state.shape == (batch, channels, width - 1), (
        f"initial_state must be (Bt, ED, K-1) = {(batch, channels, width - 1)}"
    )
    y = empty_sequence_like(x)  # x's layout: see triton_scan.empty_sequence_like
    final_state = torch.empty((batch, channels, width - 1), dtype=x.dtype, device=x.device)
    if batch == 0 or channels == 0:
        return y, final_state
    # The tile is long in the contiguous axis: L for a contiguous x, ED for the mixer's
    # channel-major view of in_proj's output (64 channels = 128 bytes of bf16 per step), with
    # ~4-8 elements per thread at 4 warps. Offline sm_90 compiles (``python -m
    # model.kernels.bench_triton --compile-report``, fp32, K = 4): contiguous (8, 128) 80
    # registers, (16, 128) 168, (32, 128) 255 + an 88-byte stack frame; channel-major (64, 8)
    # 80, (64, 16) 149, (32, 16) 76. Not yet timed on a GPU.
    if channel_major(x):
        block_l = block_l or 8
        block_d = block_d or min(triton.next_power_of_2(channels), 64)
    else:
        block_l = block_l or min(128, max(16, triton.next_power_of_2(length)))
        block_d = block_d or max(1, min(triton.next_power_of_2(channels), 1024 // block_l))
    # At least one L tile, so that the final state is written even when L == 0.
    grid = (max(1, triton.cdiv(length, block_l)), triton.cdiv(channels, block_d), batch)
    _causal_conv1d_kernel[grid](
        x, weight,
        bias if bias is not None else x,
        initial_state if initial_state is not None else x,
        y, final_state,
        channels, length,
        *x.stride(), *weight.stride(),
        *(bias.stride() if bias is not None else (0,)),
        *(initial_state.stride() if initial_state is not None else (0, 0, 0)),
        *y.stride(), *final_state.stride(),
        WIDTH=width,
        HAS_BIAS=bias is not None,
        HAS_STATE=initial_state is not None,
        SILU=silu,
        BLOCK_D=block_d,
        BLOCK_L=block_l,
        BLOCK_S=triton.next_power_of_2(max(width - 1, 1)),
        num_warps=num_warps or 4,
    )
    return y, final_state


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    *,
    block_d: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """One conv decode step in Triton; ``conv_state`` (Bt, ED, S), S >= K-1, updated IN PLACE.

    Same contract as :func:`model.kernels.causal_conv1d_update_ref`: x (Bt, ED); weight
    (ED, K); bias (ED,). Returns y (Bt, ED) in ``x.dtype``.
    """
    silu = _check_activation(activation)
    batch, channels = x.shape
    width = weight.shape[-1]
    state_len = conv_state.shape[-1]
    assert conv_state.shape[:2] == (batch, channels), "conv_state must be (Bt, ED, S)"
    assert state_len >= width - 1, "conv_state must hold at least K-1 inputs"
    assert weight.shape == (channels, width), "weight must be (ED, K)"
    assert bias is None or bias.shape == (channels,), "bias must be (ED,)"
    y = torch.empty((batch, channels), dtype=x.dtype, device=x.device)
    if batch == 0 or channels == 0:
        return y
    block_d = block_d or max(1, min(triton.next_power_of_2(channels), 256))
    grid = (triton.cdiv(channels, block_d), batch)
    _causal_conv1d_update_kernel[grid](
        x, conv_state, weight,
        bias if bias is not None else x,
        y,
        channels, state_len,
        *x.stride(), *conv_state.stride(), *weight.stride(),
        *(bias.stride() if bias is not None else (0,)),
        *y.stride(),
        WIDTH=width,
        HAS_BIAS=bias is not None,
        SILU=silu,
        BLOCK_D=block_d,
        BLOCK_S=triton.next_power_of_2(max(state_len, 1)),
        num_warps=num_warps or 4,
    )
    return y
