"""Kernels of the engine: a pure-PyTorch ``<op>_ref`` (the specification) beside each dispatcher.

Ops: ``selective_scan`` (prefill) and ``selective_state_update`` (one step), ``causal_conv1d``
and ``causal_conv1d_update``, ``mamba_decode_step`` (the whole Jamba mixer between in_proj and
out_proj for one token), ``int8_linear`` / ``int4_linear`` (weight-only quantised matmul, used
by :mod:`model.quant`), ``rms_norm``, ``rope``, ``linear`` (a multi-threaded matvec for decode), ``silu_mul`` (SwiGLU's
activation on a fused gate|up projection), ``attention_decode`` (one attention decode step over
the KV cache, RoPE and cache write included), ``causal_attention`` (a prefill chunk's
attention over the cache and itself), ``decoder_layer_decode`` (a whole Llama-family
layer for one decode step), ``mamba_mixer_decode``, ``moe_decode`` and ``mlp_decode`` (Jamba's
Mamba mixer, MoE and dense MLP sublayers for one decode step, norm and residual included),
``new_decode_plan`` (a model's whole decode step as one call; None on the reference),
``expert_linear`` (the routed experts' matvecs of an MoE decode step, expert ids read on the
device).

The dispatchers run the fastest available backend for the tensors' device, chosen once per
device type (see :mod:`model.kernels.dispatch`): the C++ CPU kernels (``cpu/kernels.cpp``,
compiled on first use), Triton on CUDA, or the reference. Tests and benchmarks pick one with
``use("ref" | "cpp" | "triton" | "auto")``, also usable as ``with use("ref"): ...``;
``active_backend(device)`` and ``op_backends(device)`` say what runs. Benchmark:
``python -m model.kernels.bench``.
"""

from model.kernels.attention_decode import attention_decode, attention_decode_ref, sdpa_backends
from model.kernels.causal_attention import causal_attention, causal_attention_ref
from model.kernels.causal_conv1d import (
    causal_conv1d,
    causal_conv1d_ref,
    causal_conv1d_update,
    causal_conv1d_update_ref,
)
from model.kernels.decode_plan import new_decode_plan
from model.kernels.decoder_layer import decoder_layer_decode, decoder_layer_decode_ref
from model.kernels.dispatch import (
    BackendUnavailable,
    active_backend,
    op_backends,
    register_backend,
    use,
)
from model.kernels.expert_linear import expert_linear, expert_linear_ref
from model.kernels.hybrid_decode import (
    mamba_mixer_decode,
    mamba_mixer_decode_ref,
    mlp_decode,
    mlp_decode_ref,
    moe_decode,
    moe_decode_ref,
)
from model.kernels.linear import linear, linear_ref
from model.kernels.mamba_decode import mamba_decode_step, mamba_decode_step_ref
from model.kernels.quant_linear import (
    dequantize_int4,
    dequantize_int4_ref,
    dequantize_int8,
    dequantize_int8_ref,
    int4_linear,
    int4_linear_ref,
    int8_linear,
    int8_linear_ref,
    pack_int4,
    quantize_activations,
    quantize_activations_ref,
    unpack_int4,
)
from model.kernels.rms_norm import rms_norm, rms_norm_ref
from model.kernels.rope import rope, rope_ref
from model.kernels.selective_scan import (
    selective_scan,
    selective_scan_ref,
    selective_state_update,
    selective_state_update_ref,
)
from model.kernels.silu_mul import silu_mul, silu_mul_ref

__all__ = [
    "BackendUnavailable",
    "active_backend",
    "attention_decode",
    "attention_decode_ref",
    "causal_attention",
    "causal_attention_ref",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
    "decoder_layer_decode",
    "decoder_layer_decode_ref",
    "dequantize_int4",
    "dequantize_int4_ref",
    "dequantize_int8",
    "dequantize_int8_ref",
    "expert_linear",
    "expert_linear_ref",
    "int4_linear",
    "int4_linear_ref",
    "int8_linear",
    "int8_linear_ref",
    "linear",
    "linear_ref",
    "mamba_decode_step",
    "mamba_decode_step_ref",
    "mamba_mixer_decode",
    "mamba_mixer_decode_ref",
    "mlp_decode",
    "mlp_decode_ref",
    "moe_decode",
    "moe_decode_ref",
    "new_decode_plan",
    "op_backends",
    "pack_int4",
    "quantize_activations",
    "quantize_activations_ref",
    "register_backend",
    "rms_norm",
    "rms_norm_ref",
    "rope",
    "rope_ref",
    "sdpa_backends",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "silu_mul",
    "silu_mul_ref",
    "unpack_int4",
    "use",
]
