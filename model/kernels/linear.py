"""A linear layer's matmul, ``y = x @ weight^T + bias``, with a decode-sized fast path.

Shapes: x (..., K), weight (N, K), bias (N,) or None; y (..., N) in x's dtype. The weight may
be stored in a narrower floating type than x (the bf16 weights of ``model.quant``'s ``"bf16"``
under fp32 activations): it is widened to x's dtype, exactly, and the product is x's dtype.

Why an op: decoding one token multiplies a single row by every weight matrix, so the time is
the time to stream the weights from memory. PyTorch's BLAS matvec (gemv) runs such a product
on one thread, reaching ~15 GB/s here whatever ``torch.set_num_threads`` says; the C++ kernel
splits the output rows over the threads and prefetches ahead, ~25-29 GB/s with two. Longer
inputs (prefill) are compute-bound and go to the BLAS matmul in every backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.kernels.dispatch import implementation, register_reference


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: ``F.linear`` on the weight (and bias) widened to x's dtype."""
    if bias is not None:
        bias = bias.to(x.dtype)
    return F.linear(x, weight.to(x.dtype), bias)


register_reference("linear", linear_ref)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The linear op on the active backend; same contract as :func:`linear_ref`."""
    return implementation("linear", x.device.type)(x, weight, bias)
