"""Compile ``kernels.cpp`` on first use with torch.utils.cpp_extension and wrap its custom ops.

Why compile at run time: the kernels are built with ``-march=native`` for the machine that runs
them (AVX-512 where present), which a portable wheel cannot do. The build is cached in torch's
extensions directory (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) under a
name that hashes the source, the compiler flags and the CPU's feature flags, so a cache shared
between different machines never loads a binary built for another CPU. Builds are serialised with
an ``flock`` that the kernel releases when its holder dies, so a compile interrupted by a kill or
a timeout never leaves the next process waiting forever on torch's own lock file.

The C++ library registers ops in the ``model_kernels`` namespace (TORCH_LIBRARY); this module
adds their fake (meta) implementations so ``torch.compile`` can trace through them, and returns
thin Python wrappers with the dispatchers' signatures.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from model.kernels.causal_attention import causal_attention_split
from model.kernels.dispatch import BackendUnavailable

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("kernels.cpp")
_CFLAGS = [
    "-O3", "-march=native", "-mprefer-vector-width=256", "-fopenmp", "-std=c++17", "-DNDEBUG",
    # Lets GCC vectorise float->int conversions and libm-free math; we never read FP traps.
    "-fno-trapping-math", "-fno-math-errno",
]
_LDFLAGS = ["-fopenmp"]
_FIX = (
    "the C++ CPU kernels need a C++ compiler (apt-get install g++) and ninja "
    "(pip install ninja); or call model.kernels.use('ref') to run the PyTorch reference"
)

# Up to this many rows of x the matvec kernels run; beyond, BLAS matmul (dequantised weights).
_INT8_MATVEC_MAX_ROWS = 8

# Weights the fused decoder-layer kernel reads: fp32, int8 and packed 4-bit (model.quant).
_LAYER_WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.int8, torch.uint8)
_KV_DTYPES = (torch.float32, torch.float16)  # KV caches the decode ops read (fp16: widened)

_lock = threading.Lock()
_ops: dict[str, Callable[..., Any]] | None = None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _extension_name() -> str:
    digest = hashlib.sha256()
    digest.update(_SOURCE.read_bytes())
    digest.update(" ".join(_CFLAGS).encode())
    digest.update(_cpu_flags().encode())
    digest.update(torch.__version__.encode())
    return f"model_kernels_cpu_{digest.hexdigest()[:12]}"


def _build_directory(name: str) -> Path:
    """Where the extension is built: ``$TORCH_EXTENSIONS_DIR/<name>`` or torch's default root."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        from torch.utils import cpp_extension

        version = f"py{sys.version_info.major}{sys.version_info.minor}"
        root = os.path.join(cpp_extension.get_default_build_root(), f"{version}_cpu")
    directory = Path(root) / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextlib.contextmanager
def _exclusive_build(directory: Path) -> Iterator[None]:
    """Hold an flock on ``directory`` for one build, clearing a lock file a killed build left.

    torch's ``cpp_extension`` guards a build with a plain ``lock`` file that only a clean exit
    removes; a process killed mid-compile leaves it behind and every later process sleeps on it
    forever. Every build of ours holds this flock, which the kernel drops when its holder dies, so
    a ``lock`` file seen while holding it belongs to no running build and is removed.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock file is all there is
        yield
        return
    with open(directory / "build.flock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = directory / "lock"
            if stale.exists():
                logger.warning("removing %s, left by an interrupted build of the C++ kernels", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compile() -> None:
    if not _SOURCE.exists():
        raise BackendUnavailable(f"missing kernel source {_SOURCE}")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise BackendUnavailable(f"no C++ compiler ({compiler!r} not found): {_FIX}")
    from torch.utils import cpp_extension

    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as exc:
        raise BackendUnavailable(f"ninja is not installed: {_FIX}") from exc
    name = _extension_name()
    directory = _build_directory(name)
    try:
        with _exclusive_build(directory):
            cpp_extension.load(
                name=name,
                sources=[str(_SOURCE)],
                extra_cflags=_CFLAGS,
                extra_ldflags=_LDFLAGS,
                build_directory=str(directory),
                is_python_module=False,
                verbose=False,
            )
    except Exception as exc:  # compiler errors surface as RuntimeError/CalledProcessError
        raise BackendUnavailable(f"compiling {_SOURCE.name} failed ({exc}); {_FIX}") from exc


def _register_fakes() -> None:
    """Shape-only implementations so torch.compile / FakeTensor tracing can see through the ops."""
    lib = "model_kernels::"

    @torch.library.register_fake(lib + "selective_scan_fwd")
    def _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
        batch, channels, _ = u.shape
        return torch.empty_like(u), u.new_empty((batch, channels, A.shape[1]), dtype=torch.float32)

    @torch.library.register_fake(lib + "causal_conv1d_fwd")
    def _conv(x, weight, bias, initial_state, silu):
        batch, channels, _ = x.shape
        return torch.empty_like(x), x.new_empty((batch, channels, weight.shape[1] - 1))

    @torch.library.register_fake(lib + "causal_conv1d_update")
    def _conv_step(x, conv_state, weight, bias, silu):
        return torch.empty_like(x)

    @torch.library.register_fake(lib + "selective_state_update")
    def _step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
        return torch.empty_like(x)

    @torch.library.register_fake(lib + "mamba_decode_step")
    def _fused(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
               dt_proj_weight, dt_proj_bias, A, D, dt_norm_weight, b_norm_weight,
               c_norm_weight, norm_eps):
        return torch.empty_like(x)

    @torch.library.register_fake(lib + "int8_linear")
    def _int8(x, weight, scale, bias):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_fake(lib + "int4_linear")
    def _int4(x, packed, scale, minimum, bias):
        return x.new_empty((*x.shape[:-1], packed.shape[0]))

    @torch.library.register_fake(lib + "quantize_activations")
    def _quantize_activations(x):
        return x.new_empty(x.shape, dtype=torch.float32)

    @torch.library.register_fake(lib + "dequantize_int8")
    def _dequantize_int8(weight, scale):
        return weight.new_empty(weight.shape, dtype=torch.float32)

    @torch.library.register_fake(lib + "dequantize_int4")
    def _dequantize_int4(packed, scale, minimum):
        return packed.new_empty((packed.shape[0], packed.shape[1] * 2), dtype=torch.float32)

    @torch.library.register_fake(lib + "rms_norm")
    def _rms(x, weight, eps):
        return torch.empty_like(x)

    @torch.library.register_fake(lib + "rope")
    def _rope(x, cos, sin):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "silu_mul")
    def _silu_mul(x):
        return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))

    @torch.library.register_fake(lib + "attention_decode")
    def _attention_decode(q, k, v, k_cache, v_cache, start, cos, sin):
        return q.new_empty((k_cache.shape[0], 1, q.numel() // k_cache.shape[0]))

    @torch.library.register_fake(lib + "decoder_layer_decode")
    def _layer(h, attn_norm, ffn_norm, eps, qkv, o, gate_up, down, k_cache, v_cache, start, cos,
               sin):
        return torch.empty_like(h, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "mamba_mixer_decode")
    def _mamba_mixer(h, norm, eps, in_proj, conv_state, ssm_state, conv_weight, conv_bias,
                     x_proj_weight, dt_proj_weight, dt_proj_bias, A, D, dt_norm_weight,
                     b_norm_weight, c_norm_weight, out_proj):
        return torch.empty_like(h, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "mlp_decode")
    def _mlp(h, norm, eps, gate_up, down):
        return torch.empty_like(h, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "moe_decode")
    def _moe(h, norm, eps, router, top_k, gate, up, down):
        return torch.empty_like(h, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "linear_matvec")
    def _matvec(x, weight, bias):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _silu_flag(activation: str | None) -> bool:
    if activation in ("silu", "swish"):
        return True
    if activation is None:
        return False
    raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def _wrappers() -> dict[str, Callable[..., Any]]:
    ops = torch.ops.model_kernels

    def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, initial_state=None):
        return tuple(ops.selective_scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state
        ))

    def causal_conv1d(x, weight, bias=None, initial_state=None, activation="silu"):
        return tuple(ops.causal_conv1d_fwd(x, weight, bias, initial_state, _silu_flag(activation)))

    def causal_conv1d_update(x, conv_state, weight, bias=None, activation="silu"):
        return ops.causal_conv1d_update(x, conv_state, weight, bias, _silu_flag(activation))

    def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False):
        return ops.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))

    def mamba_decode_step(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                          dt_proj_weight, dt_proj_bias, A, D, dt_norm_weight=None,
                          b_norm_weight=None, c_norm_weight=None, norm_eps=1e-6):
        return ops.mamba_decode_step(
            x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
            dt_proj_bias, A, D, dt_norm_weight, b_norm_weight, c_norm_weight, float(norm_eps),
        )

    def int8_linear(x, weight, scale, bias=None):
        rows = x.numel() // max(x.shape[-1], 1)
        if rows > _INT8_MATVEC_MAX_ROWS:
            # Prefill: compute-bound, so dequantise once and let the BLAS matmul do the work
            # (on the same block-quantised activations as the matvec, so both paths agree).
            from model.kernels.quant_linear import ACT_BLOCK

            w = ops.dequantize_int8(weight, scale).to(x.dtype)
            if x.shape[-1] % ACT_BLOCK == 0:
                x = ops.quantize_activations(x).to(x.dtype)
            return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))
        return ops.int8_linear(x, weight, scale, bias)

    def int4_linear(x, packed, scale, minimum, bias=None):
        rows = x.numel() // max(x.shape[-1], 1)
        if rows > _INT8_MATVEC_MAX_ROWS:  # prefill: dequantise once, BLAS matmul
            w = ops.dequantize_int4(packed, scale, minimum).to(x.dtype)
            x = ops.quantize_activations(x).to(x.dtype)
            return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))
        return ops.int4_linear(x, packed, scale, minimum, bias)

    def rms_norm(x, weight, eps):
        if weight.dtype != x.dtype:  # mixed dtypes: the reference's type promotion
            from model.kernels.rms_norm import rms_norm_ref

            return rms_norm_ref(x, weight, eps)
        return ops.rms_norm(x, weight, float(eps))

    def linear(x, weight, bias=None):
        rows = x.numel() // max(x.shape[-1], 1)
        if (
            rows <= _INT8_MATVEC_MAX_ROWS and x.dtype == torch.float32
            and weight.dtype in (torch.float32, torch.bfloat16)
            and weight.is_contiguous() and not (x.requires_grad or weight.requires_grad)
            and (bias is None or bias.dtype == torch.float32)
        ):
            return ops.linear_matvec(x, weight, bias)
        # Prefill, compute-bound: the BLAS matmul, on bf16 weights widened once per call (its
        # own bf16 matmul is emulated on CPUs without AVX512-BF16/AMX, 60-80x slower than fp32).
        from model.kernels.linear import linear_ref

        return linear_ref(x, weight, bias)

    def rope(x, cos, sin):
        if x.dtype != torch.float32 or cos.dtype != torch.float32 or x.dim() != 4:
            from model.kernels.rope import rope_ref  # bf16: the reference's roundings

            return rope_ref(x, cos, sin)
        return ops.rope(x, cos, sin)

    def silu_mul(x):
        if x.dtype != torch.float32:  # bf16: the reference's roundings
            from model.kernels.silu_mul import silu_mul_ref

            return silu_mul_ref(x)
        return ops.silu_mul(x)

    def attention_decode(q, k, v, k_cache, v_cache, start, cos=None, sin=None):
        if not (
            q.dtype == torch.float32 and k_cache.dtype in _KV_DTYPES
            and v_cache.dtype == k_cache.dtype and k_cache.is_contiguous()
            and v_cache.is_contiguous() and (cos is None or cos.dtype == torch.float32)
        ):
            from model.kernels.attention_decode import attention_decode_ref

            return attention_decode_ref(q, k, v, k_cache, v_cache, start, cos, sin)
        return ops.attention_decode(q, k, v, k_cache, v_cache, int(start), cos, sin)

    def decoder_layer_decode(h, attn_norm, ffn_norm, eps, qkv, o, gate_up, down, k_cache,
                             v_cache, start, cos=None, sin=None):
        if not (
            h.dtype == attn_norm.dtype == ffn_norm.dtype == torch.float32
            and k_cache.dtype in _KV_DTYPES and v_cache.dtype == k_cache.dtype
            and qkv[0].dtype in _LAYER_WEIGHT_DTYPES and o[0].dtype in _LAYER_WEIGHT_DTYPES
            and gate_up[0].dtype in _LAYER_WEIGHT_DTYPES and down[0].dtype in _LAYER_WEIGHT_DTYPES
            and (cos is None or cos.dtype == torch.float32)
        ):
            from model.kernels.decoder_layer import decoder_layer_decode_ref

            return decoder_layer_decode_ref(h, attn_norm, ffn_norm, eps, qkv, o, gate_up, down,
                                            k_cache, v_cache, start, cos, sin)
        return ops.decoder_layer_decode(h, attn_norm, ffn_norm, eps, qkv, o, gate_up, down,
                                        k_cache, v_cache, start, cos, sin)

    def mamba_mixer_decode(h, norm, eps, in_proj, conv_state, ssm_state, conv_weight, conv_bias,
                           x_proj_weight, dt_proj_weight, dt_proj_bias, A, D, dt_norm_weight,
                           b_norm_weight, c_norm_weight, out_proj):
        args = (h, norm, eps, in_proj, conv_state, ssm_state, conv_weight, conv_bias,
                x_proj_weight, dt_proj_weight, dt_proj_bias, A, D, dt_norm_weight, b_norm_weight,
                c_norm_weight, out_proj)
        if not (
            h.dtype == norm.dtype == conv_state.dtype == torch.float32
            and in_proj[0].dtype in _LAYER_WEIGHT_DTYPES and out_proj[0].dtype in _LAYER_WEIGHT_DTYPES
        ):
            from model.kernels.hybrid_decode import mamba_mixer_decode_ref

            return mamba_mixer_decode_ref(*args)
        return ops.mamba_mixer_decode(*args[:2], float(eps), *args[3:])

    def moe_decode(h, norm, eps, router, top_k, gate, up, down):
        if not (
            h.dtype == norm.dtype == router.dtype == torch.float32 and router.is_contiguous()
            and all(w.dtype in _LAYER_WEIGHT_DTYPES for w in (*gate[::4], *up[::4], *down[::4]))
        ):
            from model.kernels.hybrid_decode import moe_decode_ref

            return moe_decode_ref(h, norm, eps, router, top_k, gate, up, down)
        return ops.moe_decode(h, norm, float(eps), router, int(top_k), gate, up, down)

    def mlp_decode(h, norm, eps, gate_up, down):
        if not (
            h.dtype == norm.dtype == torch.float32
            and gate_up[0].dtype in _LAYER_WEIGHT_DTYPES and down[0].dtype in _LAYER_WEIGHT_DTYPES
        ):
            from model.kernels.hybrid_decode import mlp_decode_ref

            return mlp_decode_ref(h, norm, eps, gate_up, down)
        return ops.mlp_decode(h, norm, float(eps), gate_up, down)

    def new_decode_plan(dim):
        return torch.classes.model_kernels.DecodePlan(int(dim))

    return {
        # composed of PyTorch's CPU flash-attention op, nothing compiled: CPU-only all the same
        "causal_attention": causal_attention_split,
        "new_decode_plan": new_decode_plan,
        "mlp_decode": mlp_decode,
        "mamba_mixer_decode": mamba_mixer_decode,
        "moe_decode": moe_decode,
        "decoder_layer_decode": decoder_layer_decode,
        "attention_decode": attention_decode,
        "silu_mul": silu_mul,
        "rope": rope,
        "linear": linear,
        "rms_norm": rms_norm,
        "int4_linear": int4_linear,
        "int8_linear": int8_linear,
        "quantize_activations": ops.quantize_activations,
        "dequantize_int8": ops.dequantize_int8,
        "dequantize_int4": ops.dequantize_int4,
        "selective_scan": selective_scan,
        "causal_conv1d": causal_conv1d,
        "causal_conv1d_update": causal_conv1d_update,
        "selective_state_update": selective_state_update,
        "mamba_decode_step": mamba_decode_step,
    }


def load_ops() -> dict[str, Callable[..., Any]]:
    """Compile (first use only) and return ``{op_name: fn}``; raises BackendUnavailable with the fix."""
    global _ops
    with _lock:
        if _ops is None:
            _compile()
            _register_fakes()
            _ops = _wrappers()
            logger.info("C++ CPU kernels loaded")
        return _ops
