"""Mamba-1 selective scan for prefill, in Triton: parallel over (batch, channel blocks), chunked
over the sequence, fp32 state, with an initial state in and the final state out.

Glossary: Bt batch, ED channels (d_inner), N state size (d_state), L sequence length.

Same contract as :func:`model.kernels.selective_scan_ref` (read that docstring for the math).

How it works. One program owns a block of BLOCK_D channels of one batch row and keeps their
state h (BLOCK_D, N) in fp32 registers. It walks the sequence in chunks of BLOCK_L steps, and
within a chunk takes the N states one at a time: for state n it builds the (BLOCK_D, BLOCK_L)
tiles

    a_t = exp(dt_t * A[:, n])        b_t = dt_t * u_t * B_t[n]

and runs ``tl.associative_scan`` along the chunk with the operator of a first-order linear
recurrence, (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2). Step t of the result is (P_t, S_t) with
h_t = P_t h_start + S_t, so the chunk's states come out in O(log BLOCK_L) parallel depth; the
carried state is the last column, and y_t += h_t C_t[n] accumulates elementwise. D skip and the
SiLU gate are fused in the epilogue. Padding steps past L get dt = 0 (a = 1, b = 0), so they
leave h unchanged and the last column is always the state at step L-1.

An earlier version scanned one (BLOCK_D, N, BLOCK_L) tile per chunk and reduced y over N; on an
H100 (bf16, ED 2048, N 16, L 2048) it took 0.29 ms against this loop's 0.17, and 0.86 against
0.15 on the mixer's channel-major layout: the 3-D tiles forced cross-thread reductions over N
and over L and layout conversions every chunk, and capped BLOCK_L at 16-32 for registers.

Memory: every input is read once and y written once. Arbitrary strides are accepted, so the
mixer's ``x, z = in_proj(h).transpose(1, 2).chunk(2, dim=1)`` views need no copy. Those are
channel-major (ED contiguous, stride 2ED along L), unlike a contiguous (Bt, ED, L) tensor; y
is allocated in u's layout (see :func:`empty_sequence_like`), so ``y.transpose(1, 2)`` feeds
out_proj without a copy.

mamba-ssm's CUDA kernel instead gives each thread a run of consecutive steps and does a
block-wide scan across threads, with shared-memory choreography Triton does not expose; it is
still about 2x faster in bf16 on contiguous inputs (0.09 vs 0.17 ms), while in fp32 and on
the strided layouts the model passes (B, C transposed from (Bt, L, N); x, z channel-major when
the weights are quantised), which mamba-ssm copies to contiguous first, this kernel is level
with it or slightly ahead. Measured with ``python -m model.kernels.bench_triton`` on
an H100 (see that module).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _linear_recurrence_combine(a1, b1, a2, b2):
    # h -> a1 h + b1 followed by h -> a2 h + b2 is h -> (a1 a2) h + (a2 b1 + b2).
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # The threshold rule of F.softplus and mamba-ssm (x > 20 -> x); fp32 in, fp32 out.
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


# Sequence lengths vary call to call: no specialisation on L (its ==1 / %16 cases), so a new
# prompt length does not trigger a fresh compile.
@triton.jit(do_not_specialize=["length"])
def _selective_scan_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr,
    channels, n_state, length,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_A_d, s_A_n,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_D,
    s_z_b, s_z_d, s_z_l,
    s_bias,
    s_h0_b, s_h0_d, s_h0_n,
    s_y_b, s_y_d, s_y_l,
    s_hT_b, s_hT_d, s_hT_n,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)  # int64 so batch offsets of long sequences do not wrap

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < channels
    mask_n = offs_n < n_state
    mask_dn = mask_d[:, None] & mask_n[None, :]

    if HAS_H0:
        h = tl.load(
            h0_ptr + pid_b * s_h0_b + offs_d[:, None] * s_h0_d + offs_n[None, :] * s_h0_n,
            mask=mask_dn, other=0.0,
        ).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + offs_d * s_D, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(tl.float32)

    # Pointers to the current chunk, advanced by BLOCK_L steps per iteration: with 64-bit
    # pointers and int64 row offsets, ED * L or L * stride beyond 2**31 (long contexts, or
    # (Bt, L, ED) storage seen through a transpose) cannot overflow 32-bit offset arithmetic.
    rows = offs_d.to(tl.int64)[:, None]
    steps = tl.arange(0, BLOCK_L)[None, :]
    u_ptrs = u_ptr + pid_b * s_u_b + rows * s_u_d + steps * s_u_l  # (BLOCK_D, BLOCK_L)
    dt_ptrs = dt_ptr + pid_b * s_dt_b + rows * s_dt_d + steps * s_dt_l
    z_ptrs = z_ptr + pid_b * s_z_b + rows * s_z_d + steps * s_z_l
    y_ptrs = y_ptr + pid_b * s_y_b + rows * s_y_d + steps * s_y_l
    is_last = (tl.arange(0, BLOCK_L) == BLOCK_L - 1)[None, :]
    B_row = B_ptr + pid_b * s_B_b + tl.arange(0, BLOCK_L).to(tl.int64) * s_B_l  # (BLOCK_L,)
    C_row = C_ptr + pid_b * s_C_b + tl.arange(0, BLOCK_L).to(tl.int64) * s_C_l

    for start in range(0, length, BLOCK_L):
        offs_l = start + tl.arange(0, BLOCK_L)
        mask_l = offs_l < length
        mask_dl = mask_d[:, None] & mask_l[None, :]

        u = tl.load(u_ptrs, mask=mask_dl, other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_L)
        dt = tl.load(dt_ptrs, mask=mask_dl, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask_dl, dt, 0.0)  # padding steps: a = 1, b = 0
        # One state n at a time on (BLOCK_D, BLOCK_L) tiles: y accumulates elementwise, and
        # no tile spans N, so nothing is reduced across N.
        dtu = dt * u
        y = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
        h_next = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for n in tl.static_range(BLOCK_N):
            pick = offs_n[None, :] == n
            h_n = tl.sum(tl.where(pick, h, 0.0), axis=1)  # (BLOCK_D,): column n of h
            # A's column n and B's, C's row n: small re-reads that stay in L1. Padded states
            # (n >= N) read A = B = C = 0, so their h stays 0 and adds nothing to y.
            in_n = (offs_l * 0 + n) < n_state
            A_n = tl.load(A_ptr + offs_d * s_A_d + n * s_A_n,
                          mask=mask_d & ((offs_d * 0 + n) < n_state),
                          other=0.0).to(tl.float32) * 1.4426950408889634  # exp via exp2
            B_n = tl.load(B_row + n * s_B_n, mask=mask_l & in_n, other=0.0).to(tl.float32)
            C_n = tl.load(C_row + n * s_C_n, mask=mask_l & in_n, other=0.0).to(tl.float32)
            a = tl.exp2(dt * A_n[:, None])  # (BLOCK_D, BLOCK_L)
            b = dtu * B_n[None, :]
            prod, acc = tl.associative_scan((a, b), axis=1, combine_fn=_linear_recurrence_combine)
            hs = prod * h_n[:, None] + acc  # h_t[:, n] for every step of the chunk
            y += hs * C_n[None, :]
            last = tl.sum(tl.where(is_last, hs, 0.0), axis=1)  # state after the chunk
            h_next = tl.where(pick, last[:, None], h_next)
        h = h_next

        if HAS_D:
            y += D[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptrs, mask=mask_dl, other=0.0).to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(y_ptrs, y, mask=mask_dl)  # cast to y's dtype

        u_ptrs += BLOCK_L * s_u_l
        dt_ptrs += BLOCK_L * s_dt_l
        z_ptrs += BLOCK_L * s_z_l
        y_ptrs += BLOCK_L * s_y_l
        B_row += BLOCK_L * s_B_l
        C_row += BLOCK_L * s_C_l

    tl.store(
        hT_ptr + pid_b * s_hT_b + offs_d[:, None] * s_hT_d + offs_n[None, :] * s_hT_n,
        h, mask=mask_dn,
    )


def _strides(t: torch.Tensor | None, ndim: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * ndim


def channel_major(t: torch.Tensor) -> bool:
    """Whether a (Bt, ED, L) tensor is stored with ED contiguous: a transposed (Bt, L, ED)."""
    return t.dim() == 3 and t.shape[1] > 1 and t.stride(1) == 1 and t.stride(2) != 1


def empty_sequence_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised tensor of ``t``'s (Bt, ED, L) shape, channel-major when ``t`` is (a
    transposed (Bt, L, ED) buffer, so that writes coalesce like the reads and the caller's
    ``.transpose(1, 2)`` is contiguous), else contiguous. The custom ops' fake kernels use it too."""
    batch, channels, length = t.shape
    dtype = dtype or t.dtype
    if channel_major(t):
        return torch.empty((batch, length, channels), dtype=dtype, device=t.device).transpose(1, 2)
    return torch.empty((batch, channels, length), dtype=dtype, device=t.device)


def default_scan_blocks(channels: int, n_state: int, length: int,
                        bc_unit_stride: bool = True) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_L, num_warps) for a launch; ``bc_unit_stride``: B and C are contiguous
    along L (the model's B, C are transposed (Bt, L, N) tensors, stride N along L).

    From sweeps on an H100 (bf16 and fp32, Bt 1 and 4, ED 1536-2048, N 16, L 2048-8192; 41
    configs of BLOCK_D 1-32, BLOCK_L 8-256, 2-8 warps): BLOCK_D 8 and BLOCK_L 128 were best
    throughout; 8 warps when B, C are contiguous along L (0.17 ms vs 0.25 with 4 warps), but
    4 warps when they are strided (0.13 ms vs 0.67 with 8, at ED 1536 and L 2048: the model's
    case). Shorter sequences get a shorter chunk and fewer warps (about 128 tile elements per
    warp).
    """
    block_l = min(128, max(16, triton.next_power_of_2(length)))
    block_d = max(1, min(8, triton.next_power_of_2(channels)))
    warps = max(1, min(8 if bc_unit_stride else 4, block_d * block_l // 128))
    return block_d, block_l, warps


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    *,
    block_d: int | None = None,
    block_l: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan in Triton; same contract as :func:`model.kernels.selective_scan_ref`.

    Shapes: u, delta, z (Bt, ED, L); A (ED, N); B, C (Bt, N, L); D, delta_bias (ED,);
    initial_state (Bt, ED, N). Returns ``(y, final_state)``: y (Bt, ED, L) in ``u.dtype``,
    final_state (Bt, ED, N) fp32. Inputs may be fp32, bf16 or fp16 and non-contiguous; all
    arithmetic is fp32. ``block_d``/``block_l``/``num_warps`` override the launch heuristics
    (for the benchmark's sweep).
    """
    batch, channels, length = u.shape
    n_state = A.shape[1]
    assert delta.shape == u.shape, f"delta {tuple(delta.shape)} != u {tuple(u.shape)}"
    assert A.shape == (channels, n_state), f"A must be (ED, N), got {tuple(A.shape)}"
    assert B.shape == (batch, n_state, length), f"B must be (Bt, N, L), got {tuple(B.shape)}"
    assert C.shape == (batch, n_state, length), f"C must be (Bt, N, L), got {tuple(C.shape)}"
    assert z is None or z.shape == u.shape, "z must have u's shape"
    assert D is None or D.shape == (channels,), "D must be (ED,)"
    assert delta_bias is None or delta_bias.shape == (channels,), "delta_bias must be (ED,)"
    assert initial_state is None or initial_state.shape == (batch, channels, n_state), (
        "initial_state must be (Bt, ED, N)"
    )

    y = empty_sequence_like(u)
    final_state = torch.empty((batch, channels, n_state), dtype=torch.float32, device=u.device)
    if length == 0 or batch == 0 or channels == 0:
        if initial_state is None:
            final_state.zero_()
        else:
            final_state.copy_(initial_state)
        return y, final_state

    unit = length == 1 or (B.stride(2) == 1 and C.stride(2) == 1)
    dflt_d, dflt_l, dflt_w = default_scan_blocks(channels, n_state, length, unit)
    block_d = block_d or dflt_d
    block_l = block_l or dflt_l
    grid = (triton.cdiv(channels, block_d), batch)
    _selective_scan_kernel[grid](
        u, delta, A, B, C,
        D if D is not None else u,
        z if z is not None else u,
        delta_bias if delta_bias is not None else u,
        initial_state if initial_state is not None else u,
        y, final_state,
        channels, n_state, length,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        *_strides(D, 1), *_strides(z, 3), *_strides(delta_bias, 1),
        *_strides(initial_state, 3), *y.stride(), *final_state.stride(),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        HAS_H0=initial_state is not None,
        SOFTPLUS=bool(delta_softplus),
        BLOCK_D=block_d,
        BLOCK_N=triton.next_power_of_2(n_state),
        BLOCK_L=block_l,
        num_warps=num_warps or dflt_w,
    )
    return y, final_state
