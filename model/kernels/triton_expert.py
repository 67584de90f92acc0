"""``expert_linear`` in Triton: ``y[s] = W[experts[s]] @ x[s]`` for the few routed slots of an
MoE decode step, reading the expert ids on the device (no host sync, CUDA-graph safe).

Same contract as :func:`model.kernels.expert_linear_ref`. One program computes BLOCK_N output
rows of one slot: it loads the slot's expert id, then streams those rows of that expert's
matrix in BLOCK_K-wide tiles against x[s], accumulating in fp32. Each routed matrix is read once
in place (the reference copies them out first); a decode step is bandwidth-bound, so that read
is the cost.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _expert_linear_kernel(
    x_ptr, w_ptr, e_ptr, y_ptr,
    n_out, n_in,
    s_x_s, s_x_k,
    s_w_e, s_w_n, s_w_k,
    s_e,
    s_y_s, s_y_n,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    slot = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    expert = tl.load(e_ptr + slot * s_e).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_out
    rows = w_ptr + expert * s_w_e + offs_n.to(tl.int64)[:, None] * s_w_n  # (BLOCK_N, 1)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, n_in, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        mask_k = offs_k < n_in
        x = tl.load(x_ptr + slot * s_x_s + offs_k * s_x_k, mask=mask_k, other=0.0).to(tl.float32)
        w = tl.load(rows + offs_k[None, :] * s_w_k, mask=mask_n[:, None] & mask_k[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)
    tl.store(y_ptr + slot * s_y_s + offs_n * s_y_n, acc, mask=mask_n)  # cast to y's dtype


def expert_linear(
    x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor,
    *, block_n: int | None = None, block_k: int | None = None,
) -> torch.Tensor:
    """Triton expert_linear; contract of :func:`model.kernels.expert_linear_ref`.
    ``block_n``/``block_k`` override the launch's tile (tests use small ones)."""
    slots, n_in = x.shape
    _, n_out, k_w = weights.shape
    assert k_w == n_in, f"weights (E, N, K) = {tuple(weights.shape)} do not take x (S, {n_in})"
    assert experts.shape == (slots,), f"experts must be (S,) = ({slots},), got {tuple(experts.shape)}"
    y = torch.empty((slots, n_out), dtype=x.dtype, device=x.device)
    if slots == 0 or n_out == 0:
        return y
    # 32 rows x 128 columns: 4096 elements per program, enough programs for a GPU's SMs at
    # decode sizes (S = 2-16 slots x N / 32 row blocks).
    block_n = block_n or min(32, triton.next_power_of_2(n_out))
    block_k = block_k or min(128, triton.next_power_of_2(n_in))
    grid = (slots, triton.cdiv(n_out, block_n))
    _expert_linear_kernel[grid](
        x, weights, experts, y, n_out, n_in,
        *x.stride(), *weights.stride(), experts.stride(0), *y.stride(),
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )
    return y
