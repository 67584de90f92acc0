"""``rms_norm`` in Triton: one launch per norm instead of the reference's eight PyTorch ops.

Same contract as :func:`model.kernels.rms_norm_ref`: fp32 statistics, the normalised row cast
to x's dtype BEFORE the weight multiply (the Hugging Face order), the product rounded to x's
dtype. One program normalises one row held whole in registers (rows up to 64k wide; wider
ones, and a weight of another dtype than x, go to the reference: see :func:`fits`).

Why: a GPU prefill chunk of a small model is bound by kernel launches from the host, and the
norms were the largest group of them (five per Mamba layer: the block's two and the mixer's
dt / B / C norms, each eight launches).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_WIDTH = 65536


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, n_cols, s_x_row, s_y_row, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n_cols
    x = tl.load(x_ptr + row * s_x_row + offs, mask=mask, other=0.0).to(tl.float32)
    normed = x * tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    normed = normed.to(y_ptr.dtype.element_ty).to(tl.float32)  # x's dtype before the weight
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * s_y_row + offs, w * normed, mask=mask)


def fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel takes these inputs (else the reference runs them)."""
    return weight.dtype == x.dtype and x.shape[-1] <= MAX_WIDTH and x.numel() > 0


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton RMSNorm; contract of :func:`model.kernels.rms_norm_ref`, for inputs that
    :func:`fits` (the backend's ``rms_norm`` sends the others to the reference)."""
    assert fits(x, weight), "rms_norm kernel: weight dtype differs from x's, or rows too wide"
    width = x.shape[-1]
    rows = x.reshape(-1, width)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    block = triton.next_power_of_2(width)
    _rms_norm_kernel[(rows.shape[0],)](
        rows, weight.contiguous(), y, width, rows.stride(0), width, float(eps),
        BLOCK=block, num_warps=max(1, min(16, block // 512)),
    )
    return y
