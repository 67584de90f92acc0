"""Kernels of the engine: a pure-PyTorch ``<op>_ref`` (the specification) beside each dispatcher.

The dispatchers (``selective_scan``, ``causal_conv1d``, ...) run the fastest available backend
for the tensors' device, chosen once per device type (see :mod:`model.kernels.dispatch`):
the C++ CPU kernels, Triton on CUDA, or the reference. Tests and benchmarks pick one with
``use("ref" | "cpp" | "triton" | "auto")``, also usable as ``with use("ref"): ...``.
"""

from model.kernels.causal_conv1d import (
    causal_conv1d,
    causal_conv1d_ref,
    causal_conv1d_update,
    causal_conv1d_update_ref,
)
from model.kernels.dispatch import (
    BackendUnavailable,
    active_backend,
    op_backends,
    register_backend,
    use,
)
from model.kernels.mamba_decode import mamba_decode_step, mamba_decode_step_ref
from model.kernels.quant_linear import (
    dequantize_int4,
    int4_linear,
    int4_linear_ref,
    int8_linear,
    int8_linear_ref,
    pack_int4,
    unpack_int4,
)
from model.kernels.selective_scan import (
    selective_scan,
    selective_scan_ref,
    selective_state_update,
    selective_state_update_ref,
)

__all__ = [
    "BackendUnavailable",
    "active_backend",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
    "dequantize_int4",
    "int4_linear",
    "int4_linear_ref",
    "int8_linear",
    "int8_linear_ref",
    "mamba_decode_step",
    "mamba_decode_step_ref",
    "op_backends",
    "pack_int4",
    "register_backend",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "unpack_int4",
    "use",
]
