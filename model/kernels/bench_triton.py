"""Timings and an offline compile report for the Triton kernels.

    python -m model.kernels.bench_triton                    # on a CUDA GPU: the timing table
    python -m model.kernels.bench_triton --sweep            # ... plus the scan's block-size sweep
    python -m model.kernels.bench_triton --compile-report   # NO GPU needed: registers / spills

Timing table (GPU): each op at Jamba sizes (ED = 2048, N = 16, K = 4; prefill L = 2048, decode
batch 1 and 8) and each input dtype, plus the backend's composed ``mamba_decode_step``, Triton vs our PyTorch reference vs mamba-ssm /
causal-conv1d when their wheels are installed, measured in the same run with
``triton.testing.do_bench`` (median ms), plus the effective bandwidth of the Triton kernel
(bytes it must move / time). Ratios are per row against Triton; for ``mamba_decode_step`` the
"other" column is the composed step (``triton_backend.mamba_decode_step_composed``). The machine and versions are
printed above the table.

Compile report (no GPU): compiles every kernel for NVIDIA targets (sm_80, sm_90) through the
same specialisation the runtime would apply to real-size tensors (``meta`` tensors stand in for
data) and reads registers, spill (local) memory and shared memory from the cubin with the
``cuobjdump`` that ships with Triton. It proves the kernels compile for a GPU and fit in
registers; it says nothing about speed.

Measured 2026-11-22 on an H100 80GB HBM3 (torch 2.11.0+cu130, Triton 3.6.0; mamba-ssm at
e9594ce and causal-conv1d at 0d2252d built from source for sm_90, forward kernels only, since
no wheels exist for this torch), median ms, "other" = mamba-ssm / causal-conv1d:

    op                     shape              dtype  triton   ref      other   other/triton
    selective_scan         Bt=1 L=2048        fp32   0.176    223      0.184   1.04
    selective_scan         Bt=4 L=2048        fp32   0.710    232      0.602   0.85
    selective_scan         Bt=1 L=2048 model  fp32   0.234    314      0.262   1.12
    selective_scan         Bt=1 L=2048        bf16   0.172    263      0.091   0.53
    selective_scan         Bt=4 L=2048        bf16   0.596    312      0.309   0.52
    selective_scan         Bt=1 L=2048 model  bf16   0.146    277      0.159   1.09
    causal_conv1d          Bt=1 L=2048        bf16   0.021    0.217    0.011   0.54
    causal_conv1d          Bt=1 L=2048 model  bf16   0.034    0.257    0.021   0.64
    selective_state_update Bt=8               bf16   0.042    0.332    0.149   3.56
    causal_conv1d_update   Bt=8               bf16   0.006    0.091    0.022   3.72

Rows under 0.05 ms are launch-bound and vary 2-3x between runs on that machine (the whole
table, every dtype, is what the command prints). The scan's reference is a Python loop over L.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from model.kernels import (
    causal_conv1d_ref,
    causal_conv1d_update_ref,
    selective_scan_ref,
    selective_state_update_ref,
)

ED, N_STATE, WIDTH, LENGTH = 2048, 16, 4, 2048
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# ---------------------------------------------------------------------------------------------
# Inputs at Jamba sizes.


DT_RANK = 128


def _random(device: Any, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    def r(*shape: int, dt: torch.dtype = dtype, scale: float = 1.0) -> torch.Tensor:
        if str(device) == "meta":
            return torch.empty(*shape, dtype=dt, device="meta")
        return (torch.randn(*shape, device=device) * scale).to(dt)

    return r


def scan_inputs(batch: int, length: int, dtype: torch.dtype, device: Any,
                model_layout: bool = False) -> dict[str, Any]:
    """``model_layout``: u, z are the halves of a transposed (Bt, L, 2ED) in_proj output and
    B, C transposed slices of a (Bt, L, R+2N) x_proj output, as model/mamba.py passes them;
    otherwise every tensor is contiguous (Bt, ED, L) / (Bt, N, L)."""
    r = _random(device, dtype)
    if model_layout:
        u, z = r(batch, length, 2 * ED).transpose(1, 2).chunk(2, dim=1)
        x_dbl = r(batch, length, DT_RANK + 2 * N_STATE)
        B = x_dbl[..., DT_RANK : DT_RANK + N_STATE].transpose(1, 2)
        C = x_dbl[..., DT_RANK + N_STATE :].transpose(1, 2)
    else:
        u, z = r(batch, ED, length), r(batch, ED, length)
        B, C = r(batch, N_STATE, length), r(batch, N_STATE, length)
    return dict(
        u=u, delta=r(batch, ED, length, scale=0.5),
        A=-torch.exp(r(ED, N_STATE, dt=torch.float32, scale=0.5)),
        B=B, C=C, D=r(ED, dt=torch.float32), z=z,
        delta_bias=r(ED, dt=torch.float32, scale=0.1), delta_softplus=True,
    )


def step_inputs(batch: int, dtype: torch.dtype, device: Any) -> dict[str, Any]:
    args = scan_inputs(batch, 1, dtype, device)
    return dict(
        state=torch.zeros(batch, ED, N_STATE, device=device),
        x=args["u"][..., 0].contiguous(), dt=args["delta"][..., 0].contiguous(), A=args["A"],
        B=args["B"][..., 0].contiguous(), C=args["C"][..., 0].contiguous(), D=args["D"],
        z=args["z"][..., 0].contiguous(), dt_bias=args["delta_bias"], dt_softplus=True,
    )


def decode_inputs(batch: int, dtype: torch.dtype, device: Any) -> dict[str, Any]:
    """Arguments of mamba_decode_step for one token of a Jamba mixer (R = DT_RANK, with norms)."""
    r = _random(device, dtype)
    s = step_inputs(batch, dtype, device)
    return dict(
        x=s["x"], z=s["z"], conv_state=r(batch, ED, WIDTH - 1), ssm_state=s["state"],
        conv_weight=r(ED, WIDTH), conv_bias=r(ED),
        x_proj_weight=r(DT_RANK + 2 * N_STATE, ED, scale=0.1), dt_proj_weight=r(ED, DT_RANK,
                                                                              scale=0.1),
        dt_proj_bias=s["dt_bias"], A=s["A"], D=s["D"], dt_norm_weight=r(DT_RANK),
        b_norm_weight=r(N_STATE), c_norm_weight=r(N_STATE),
    )


def conv_inputs(batch: int, length: int, dtype: torch.dtype, device: Any,
                model_layout: bool = False) -> dict[str, Any]:
    """``model_layout``: x is the first half of a transposed (Bt, L, 2ED) in_proj output."""
    r = _random(device, dtype)
    x = r(batch, length, 2 * ED).transpose(1, 2)[:, :ED] if model_layout else r(batch, ED, length)
    return dict(x=x, weight=r(ED, WIDTH), bias=r(ED))


# ---------------------------------------------------------------------------------------------
# Offline compile report.


@contextmanager
def _captured_launches(module: Any, kernel_name: str) -> Iterator[list[tuple[Any, tuple, dict]]]:
    """Replace ``module.<kernel_name>`` so ``kernel[grid](...)`` records its arguments."""
    kernel = getattr(module, kernel_name)
    calls: list[tuple[Any, tuple, dict]] = []

    class _Recorder:
        def __getitem__(self, grid: Any) -> Callable[..., None]:
            return lambda *args, **kwargs: calls.append((kernel, args, kwargs))

    setattr(module, kernel_name, _Recorder())
    try:
        yield calls
    finally:
        setattr(module, kernel_name, kernel)


def _compile(kernel: Any, args: tuple, kwargs: dict, capability: int) -> dict[str, Any]:
    """Compile one recorded launch for ``sm_<capability>`` as the runtime would specialise it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature  # private: best effort

    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, options, bound, specialization, options
    )
    compiled = triton.compile(
        ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__
    )
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    path = f"/tmp/maestro_triton_{os.getpid()}.cubin"
    with open(path, "wb") as fh:
        fh.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True,
                               check=True).stdout
    finally:
        os.unlink(path)
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    assert found, usage
    regs, stack, shared, local = (int(v) for v in found.groups())
    return {"regs": regs, "stack": stack, "shared": shared, "local": local,
            "num_warps": compiled.metadata.num_warps}


def _launches(dtype: torch.dtype) -> Iterator[tuple[str, Any, tuple, dict]]:
    """(op, kernel, args, kwargs) for one real-size call of each Triton wrapper, on meta tensors."""
    from model.kernels import triton_conv, triton_scan, triton_state_update

    meta = torch.device("meta")
    for model_layout in (False, True):
        scan = scan_inputs(1, LENGTH, dtype, meta, model_layout)
        scan["initial_state"] = torch.empty(1, ED, N_STATE, device=meta)
        with _captured_launches(triton_scan, "_selective_scan_kernel") as calls:
            triton_scan.selective_scan(**scan)
        yield ("selective_scan" + (" (model layout)" if model_layout else ""), *calls[0])
    step = step_inputs(8, dtype, meta)
    with _captured_launches(triton_state_update, "_selective_state_update_kernel") as calls:
        triton_state_update.selective_state_update(**step)
    yield ("selective_state_update", *calls[0])
    for model_layout in (False, True):
        conv = conv_inputs(1, LENGTH, dtype, meta, model_layout)
        conv["initial_state"] = torch.empty(1, ED, WIDTH - 1, dtype=dtype, device=meta)
        with _captured_launches(triton_conv, "_causal_conv1d_kernel") as calls:
            triton_conv.causal_conv1d(**conv)
        yield ("causal_conv1d" + (" (model layout)" if model_layout else ""), *calls[0])
    x = torch.empty(8, ED, dtype=dtype, device=meta)
    state = torch.empty(8, ED, WIDTH - 1, dtype=dtype, device=meta)
    with _captured_launches(triton_conv, "_causal_conv1d_update_kernel") as calls:
        triton_conv.causal_conv1d_update(x, state, conv["weight"], conv["bias"], "silu")
    yield ("causal_conv1d_update", *calls[0])
    from model.kernels import triton_decode

    decode = decode_inputs(8, dtype, meta)
    with _captured_launches(triton_decode, "_conv_xproj_kernel") as first, \
            _captured_launches(triton_decode, "_norm_dtproj_scan_kernel") as second:
        triton_decode.mamba_decode_step(**decode)
    yield ("mamba_decode_step [1/2]", *first[0])
    yield ("mamba_decode_step [2/2]", *second[0])
    from model.kernels import triton_expert, triton_rms_norm

    # Jamba-v0.1's MoE (16 experts, hidden 4096, FFN 14336): the up projection of 2 slots
    x = torch.empty(2, 4096, dtype=dtype, device=meta)
    experts = torch.empty(16, 14336, 4096, dtype=dtype, device=meta)
    with _captured_launches(triton_expert, "_expert_linear_kernel") as calls:
        triton_expert.expert_linear(x, experts, torch.empty(2, dtype=torch.long, device=meta))
    yield ("expert_linear", *calls[0])
    rows = torch.empty(1, LENGTH, 4096, dtype=dtype, device=meta)
    with _captured_launches(triton_rms_norm, "_rms_norm_kernel") as calls:
        triton_rms_norm.rms_norm(rows, torch.empty(4096, dtype=dtype, device=meta), 1e-6)
    yield ("rms_norm", *calls[0])


def _bare_launches(dtype: torch.dtype) -> Iterator[tuple[str, Any, tuple, dict]]:
    """The same kernels with every optional input absent (the constexpr-off branches)."""
    from model.kernels import triton_conv, triton_decode, triton_scan, triton_state_update

    meta = torch.device("meta")
    scan = scan_inputs(1, LENGTH, dtype, meta)
    scan.update(D=None, z=None, delta_bias=None, delta_softplus=False)
    with _captured_launches(triton_scan, "_selective_scan_kernel") as calls:
        triton_scan.selective_scan(**scan)
    yield ("selective_scan (bare)", *calls[0])
    step = step_inputs(8, dtype, meta)
    step.update(D=None, z=None, dt_bias=None, dt_softplus=False)
    with _captured_launches(triton_state_update, "_selective_state_update_kernel") as calls:
        triton_state_update.selective_state_update(**step)
    yield ("selective_state_update (bare)", *calls[0])
    conv = conv_inputs(1, LENGTH, dtype, meta)
    with _captured_launches(triton_conv, "_causal_conv1d_kernel") as calls:
        triton_conv.causal_conv1d(conv["x"], conv["weight"], None, None, None)
    yield ("causal_conv1d (bare)", *calls[0])
    x = torch.empty(8, ED, dtype=dtype, device=meta)
    state = torch.empty(8, ED, WIDTH, dtype=dtype, device=meta)  # Hugging Face's K-long state
    with _captured_launches(triton_conv, "_causal_conv1d_update_kernel") as calls:
        triton_conv.causal_conv1d_update(x, state, conv["weight"], None, None)
    yield ("causal_conv1d_update (bare)", *calls[0])
    decode = decode_inputs(8, dtype, meta)
    decode.update(z=None, conv_bias=None, dt_proj_bias=None, D=None, dt_norm_weight=None,
                  b_norm_weight=None, c_norm_weight=None)
    with _captured_launches(triton_decode, "_conv_xproj_kernel") as first, \
            _captured_launches(triton_decode, "_norm_dtproj_scan_kernel") as second:
        triton_decode.mamba_decode_step(**decode)
    yield ("mamba_decode_step [1/2] (bare)", *first[0])
    yield ("mamba_decode_step [2/2] (bare)", *second[0])


def compile_report(capabilities: tuple[int, ...] = (80, 90),
                   dtypes: tuple[str, ...] = ("fp32", "bf16"),
                   bare: bool = True) -> list[dict[str, Any]]:
    """Compile every kernel for each capability and dtype; one row per compile. ``bare`` adds
    the variants with every optional input absent."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's current default
    rows = []
    for dtype in dtypes:
        launches = list(_launches(DTYPES[dtype]))
        if bare:
            launches += list(_bare_launches(DTYPES[dtype]))
        for op, kernel, args, kwargs in launches:
            for capability in capabilities:
                row = {"op": op, "dtype": dtype, "sm": capability}
                try:
                    row.update(_compile(kernel, args, dict(kwargs), capability))
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[-1500:]
                rows.append(row)
    return rows


def _print_compile_report(rows: list[dict[str, Any]]) -> None:
    import triton

    print(f"Triton {triton.__version__}, torch {torch.__version__}; offline compile, no GPU used")
    print(f"{'op':30s} {'dtype':5s} {'sm':>3s} {'warps':>5s} {'regs':>5s} {'spill B':>7s} "
          f"{'stack B':>7s} {'smem B':>7s}")
    for r in rows:
        if "error" in r:
            print(f"{r['op']:30s} {r['dtype']:5s} {r['sm']:3d} ERROR {r['error']}")
        else:
            print(f"{r['op']:30s} {r['dtype']:5s} {r['sm']:3d} {r['num_warps']:5d} {r['regs']:5d} "
                  f"{r['local']:7d} {r['stack']:7d} {r['shared']:7d}")


# ---------------------------------------------------------------------------------------------
# GPU timings.


def _competitors() -> dict[str, Any]:
    found: dict[str, Any] = {}
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        found["selective_scan"] = lambda a: selective_scan_fn(
            a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"],
            a["delta_softplus"], return_last_state=True)
    except ImportError:
        pass
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        found["selective_state_update"] = lambda a: selective_state_update(**a)
    except ImportError:
        pass
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update

        found["causal_conv1d"] = lambda a: causal_conv1d_fn(
            a["x"], a["weight"], a["bias"], activation="silu")
        found["causal_conv1d_update"] = lambda a: causal_conv1d_update(
            a["x"], a["conv_state"], a["weight"], a["bias"], activation="silu")
    except ImportError:
        pass
    return found


def _versions() -> str:
    import triton

    parts = [f"torch {torch.__version__}", f"triton {triton.__version__}"]
    for name in ("mamba_ssm", "causal_conv1d"):
        try:
            module = __import__(name)
            parts.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def _time_ms(fn: Callable[[], Any], slow: bool = False) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=5 if slow else 25, rep=50 if slow else 200,
                          return_mode="median"))


# (BLOCK_D, BLOCK_L, num_warps) tried by --sweep, for contiguous inputs (False) and the mixer's
# channel-major layout with strided B, C (True): the neighbourhood of the defaults
# (triton_scan.default_scan_blocks).
SCAN_SWEEP: dict[bool, list[tuple[int, int, int]]] = {
    False: [(8, 128, 8), (8, 128, 4), (4, 256, 4), (4, 256, 2), (1, 256, 2), (2, 256, 2),
            (8, 64, 8), (4, 128, 2)],
    True: [(8, 128, 4), (8, 128, 8), (4, 256, 2), (4, 256, 4), (2, 256, 2), (16, 32, 8),
           (16, 64, 8)],
}


def bench(sweep: bool = False, device: str = "cuda",
          timer: Callable[[Callable[[], Any], bool], float] | None = None,
          dtypes: tuple[str, ...] = tuple(DTYPES)) -> list[dict[str, Any]]:
    """Time each op on ``device``; returns the table rows (and prints them).

    ``timer(fn, slow) -> ms`` replaces ``triton.testing.do_bench`` (the test suite's smoke run
    of this script under the interpreter passes one that just calls ``fn``).
    """
    from model.kernels import triton_conv, triton_scan, triton_state_update

    dev = torch.device(device)
    time_ms = timer or _time_ms
    others = _competitors()
    rows: list[dict[str, Any]] = []

    def row(op: str, shape: str, dtype: str, ours: Callable[[], Any], ref: Callable[[], Any],
            other: Callable[[], Any] | None, nbytes: int) -> None:
        t = time_ms(ours, False)
        r = time_ms(ref, True)
        o = None
        if other is not None:
            try:
                o = time_ms(other, False)
            except Exception as exc:  # a peer's build or signature problem must not stop the table
                print(f"{op} {shape} {dtype}: competitor failed: {type(exc).__name__}: {exc}"[:400])
        rows.append({"op": op, "shape": shape, "dtype": dtype, "triton_ms": t, "ref_ms": r,
                     "other_ms": o, "triton_GBps": nbytes / t / 1e6})

    for name in dtypes:
        dtype = DTYPES[name]
        es = dtype.itemsize
        # "model": the strided layout model/mamba.py passes (see scan_inputs); mamba-ssm and
        # causal-conv1d copy such inputs to contiguous first, and that copy is in their time.
        for batch, model_layout in ((1, False), (4, False), (1, True)):
            shape = f"Bt={batch} L={LENGTH}" + (" model" if model_layout else "")
            a = scan_inputs(batch, LENGTH, dtype, dev, model_layout)
            nbytes = batch * LENGTH * (4 * ED + 2 * N_STATE) * es + 2 * batch * ED * N_STATE * 4
            other = others.get("selective_scan")
            row("selective_scan", shape, name,
                lambda a=a: triton_scan.selective_scan(**a),
                lambda a=a: selective_scan_ref(**a),
                (lambda a=a, f=other: f(a)) if other else None, nbytes)
            c = conv_inputs(batch, LENGTH, dtype, dev, model_layout)
            other = others.get("causal_conv1d")
            row("causal_conv1d", shape, name,
                lambda c=c: triton_conv.causal_conv1d(**c),
                lambda c=c: causal_conv1d_ref(**c),
                (lambda c=c, f=other: f(c)) if other else None, 2 * batch * ED * LENGTH * es)
        for batch in (1, 8):
            s = step_inputs(batch, dtype, dev)
            other = others.get("selective_state_update")
            row("selective_state_update", f"Bt={batch}", name,
                lambda s=s: triton_state_update.selective_state_update(**s),
                lambda s=s: selective_state_update_ref(**s),
                (lambda s=s, f=other: f(s)) if other else None, 2 * batch * ED * N_STATE * 4)
            c = conv_inputs(batch, 1, dtype, dev)
            u = {"x": c["x"][..., 0].contiguous(), "weight": c["weight"], "bias": c["bias"],
                 "conv_state": torch.zeros(batch, ED, WIDTH - 1, dtype=dtype, device=dev)}
            other = others.get("causal_conv1d_update")
            row("causal_conv1d_update", f"Bt={batch}", name,
                lambda u=u: triton_conv.causal_conv1d_update(**u),
                lambda u=u: causal_conv1d_update_ref(**u),
                (lambda u=u, f=other: f(u)) if other else None, 2 * batch * ED * WIDTH * es)

    from model.kernels.mamba_decode import mamba_decode_step_ref
    from model.kernels.triton_backend import mamba_decode_step, mamba_decode_step_composed

    for name in [d for d in dtypes if d != "fp16"]:
        for batch in (1, 8):
            d = decode_inputs(batch, DTYPES[name], dev)
            nbytes = (2 * batch * ED * N_STATE * 4
                      + (2 * DT_RANK + 2 * N_STATE) * ED * DTYPES[name].itemsize)
            # "other" here is the composed step (separate Triton kernels + PyTorch in between)
            row("mamba_decode_step", f"Bt={batch} R={DT_RANK}", name,
                lambda d=d: mamba_decode_step(**d), lambda d=d: mamba_decode_step_ref(**d),
                lambda d=d: mamba_decode_step_composed(**d), nbytes)

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    print(f"device: {name}; {_versions()}; Python {platform.python_version()}")
    print(f"sizes: ED={ED} N={N_STATE} K={WIDTH}; median of triton.testing.do_bench")
    print(f"{'op':24s} {'shape':20s} {'dtype':5s} {'triton ms':>10s} {'GB/s':>7s} "
          f"{'ref ms':>9s} {'ref/tri':>8s} {'other ms':>9s} {'other/tri':>9s}")
    for r in rows:
        o = r["other_ms"]
        print(f"{r['op']:24s} {r['shape']:20s} {r['dtype']:5s} {r['triton_ms']:10.4f} "
              f"{r['triton_GBps']:7.0f} {r['ref_ms']:9.3f} {r['ref_ms'] / r['triton_ms']:8.1f} "
              + (f"{o:9.4f} {o / r['triton_ms']:9.2f}" if o is not None else f"{'-':>9s} {'-':>9s}"))

    if sweep:
        for model_layout, grid in SCAN_SWEEP.items():
            layout = "model layout" if model_layout else "contiguous"
            print(f"\nselective_scan block sweep (bf16, Bt=1, L={LENGTH}, {layout}): "
                  "BLOCK_D BLOCK_L warps -> ms")
            a = scan_inputs(1, LENGTH, torch.bfloat16, dev, model_layout)
            for block_d, block_l, warps in grid:
                ms = time_ms(lambda a=a, bd=block_d, bl=block_l, w=warps: triton_scan.selective_scan(
                    **a, block_d=bd, block_l=bl, num_warps=w), False)
                print(f"  {block_d:3d} {block_l:3d} {warps:2d} -> {ms:.4f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compile-report", action="store_true",
                        help="compile for sm_80/sm_90 and report registers and spills (no GPU)")
    parser.add_argument("--sm", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES),
                        help="default: fp32 bf16 for --compile-report, all three for timings")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line")
    parser.add_argument("--sweep", action="store_true", help="also sweep the scan's block sizes")
    ns = parser.parse_args(argv)
    if ns.compile_report:
        rows = compile_report(tuple(ns.sm), tuple(ns.dtypes or ("fp32", "bf16")))
        if ns.json:
            print("ROWS " + json.dumps(rows))
        else:
            _print_compile_report(rows)
        return 1 if any("error" in r for r in rows) else 0
    if not torch.cuda.is_available():
        print("no CUDA device: timings need a GPU (try --compile-report)", file=sys.stderr)
        return 2
    rows = bench(sweep=ns.sweep, dtypes=tuple(ns.dtypes or DTYPES))
    if ns.json:
        print("ROWS " + json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
