"""Kernel benchmark: each Mamba op on the reference, the C++ backend and transformers' own
PyTorch fallback (what ``JambaForCausalLM`` runs without mamba-ssm/causal-conv1d), same run.

Sizes default to a Jamba-300M-like mixer: ED = 2048 channels, N = 16, K = 4, R = 64, batch 1.
Prefill ops are timed at each sequence length; decode ops once (one token). Every comparison is
measured in the same process, interleaved, and reported as a ratio, because on a shared
2-core machine absolute numbers drift between runs.

Run ``python -m model.kernels.bench --help``; ``maestro bench engine`` calls :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from model import kernels
from model.kernels.dispatch import implementation


@dataclass
class Timing:
    """One op at one size: best-of-N seconds per call for each implementation that ran."""

    op: str
    length: int
    seconds: dict[str, float] = field(default_factory=dict)

    def ratio(self, slow: str, fast: str = "cpp") -> float | None:
        if slow in self.seconds and fast in self.seconds and self.seconds[fast] > 0:
            return self.seconds[slow] / self.seconds[fast]
        return None


def _best_seconds(fn: Callable[[], Any], repeats: int, budget_s: float) -> float:
    """Best wall time of ``fn`` after one warm-up; fewer repeats when a call is slow.

    The minimum, not the median: on a shared machine other processes only ever add time (a
    parallel region can wait a whole scheduler slice for a descheduled thread), so the fastest
    run is the best estimate of the kernel's own cost.
    """
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    runs = max(1, min(repeats, int(budget_s / max(first, 1e-9))))
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)


def _transformers_ops() -> dict[str, Callable[..., Any]] | None:
    """transformers' Jamba PyTorch fallbacks (hub kernels and mamba-ssm absent), or None."""
    try:
        import transformers.utils.logging as hf_logging
        from transformers.models.jamba import modeling_jamba as hf
    except ImportError:
        return None
    hf_logging.set_verbosity_error()  # its "falling back to the reference" notice, once per op
    return {
        "selective_scan": lambda u, dt, A, B, C, D, z, bias: hf.mamba_selective_scan(
            u, dt, A, B, C, D, z, bias, True, True
        ),
        "causal_conv1d": lambda x, w, b: hf.causal_conv1d_fn(x, w, b, "silu"),
        "causal_conv1d_update": lambda x, state, w, b: hf.causal_conv1d_update(
            x[..., None], state, w, b, "silu"
        ),
        "selective_state_update": lambda s, x, dt, A, B, C, D, z, bias: (
            hf.mamba_selective_state_update(s, x, dt, A, B, C, D, bias, True, z)
        ),
    }


def _unfused_decode(hf_ops: dict[str, Callable[..., Any]], x, z, conv_state, ssm_state, w):
    """The mixer's decode step as transformers runs it: a dozen separate PyTorch ops."""
    rank, n_state = w["dt_proj_weight"].shape[1], w["A"].shape[1]
    u = hf_ops["causal_conv1d_update"](x, conv_state, w["conv_weight"], w["conv_bias"])[..., 0]
    dt, B, C = torch.split(u @ w["x_proj_weight"].t(), [rank, n_state, n_state], dim=-1)

    def rms(v, weight):
        v32 = v.float()
        return weight * (v32 * torch.rsqrt(v32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(v.dtype)

    dt = rms(dt, w["dt_norm_weight"]) @ w["dt_proj_weight"].t()
    return hf_ops["selective_state_update"](
        ssm_state, u, dt, w["A"], rms(B, w["b_norm_weight"]), rms(C, w["c_norm_weight"]),
        w["D"], z, w["dt_proj_bias"],
    )


def _time_int8_linear(
    impls: dict[str, dict[str, Callable[..., Any]]],
    channels: int,
    randn: Callable[..., torch.Tensor],
    repeats: int,
    budget_s: float,
) -> Timing:
    """One decode-token matvec through a (2*ED, ED) weight: int8 kernel vs F.linear on the unquantised weight."""
    weight = randn(2 * channels, channels).float()
    scale = weight.abs().amax(dim=1) / 127.0
    weight8 = torch.round(weight / scale[:, None]).to(torch.int8)
    x = randn(1, channels)
    timing = Timing("int8_linear", 1)
    for name, table in impls.items():
        timing.seconds[name] = _best_seconds(
            lambda t=table: t["int8_linear"](x, weight8, scale, None), repeats, budget_s
        )
    w = weight.to(x.dtype)
    timing.seconds["torch_linear"] = _best_seconds(
        lambda: torch.nn.functional.linear(x, w), repeats, budget_s
    )
    return timing


def _time_prefill(
    impls: dict[str, dict[str, Callable[..., Any]]],
    hf_ops: dict[str, Callable[..., Any]] | None,
    length: int,
    randn: Callable[..., torch.Tensor],
    A: torch.Tensor,
    D: torch.Tensor,
    bias: torch.Tensor,
    conv_w: torch.Tensor,
    conv_b: torch.Tensor,
    n_state: int,
    repeats: int,
    budget_s: float,
    ref_max_length: int,
) -> list[Timing]:
    """Scan and conv over one sequence of ``length`` tokens (batch 1), every implementation."""
    channels = A.shape[0]
    u, dt, z = randn(1, channels, length), randn(1, channels, length, scale=0.5), randn(1, channels, length)
    B, C = randn(1, n_state, length), randn(1, n_state, length)
    scan, conv = Timing("selective_scan", length), Timing("causal_conv1d", length)
    for name, table in impls.items():
        if name == "ref" and length > ref_max_length:
            continue  # the Python loop over L takes minutes at 8192 tokens
        scan.seconds[name] = _best_seconds(
            lambda t=table: t["selective_scan"](u, dt, A, B, C, D, z, bias, True, None),
            repeats if name == "cpp" else 1, budget_s,
        )
        conv.seconds[name] = _best_seconds(
            lambda t=table: t["causal_conv1d"](u, conv_w, conv_b, None, "silu"), repeats, budget_s
        )
    if hf_ops is not None:
        scan.seconds["transformers"] = _best_seconds(
            lambda: hf_ops["selective_scan"](u, dt, A, B, C, D, z, bias), 1, budget_s
        )
        conv.seconds["transformers"] = _best_seconds(
            lambda: hf_ops["causal_conv1d"](u, conv_w, conv_b), repeats, budget_s
        )
    return [scan, conv]


def run(
    lengths: tuple[int, ...] = (512, 2048, 8192),
    channels: int = 2048,
    n_state: int = 16,
    rank: int = 64,
    width: int = 4,
    threads: int = 2,
    dtype: torch.dtype = torch.float32,
    repeats: int = 10,
    budget_s: float = 6.0,
    with_reference: bool = True,
    with_transformers: bool = True,
    ref_max_length: int = 2048,
) -> dict[str, Any]:
    """Time every op and return ``{"machine": ..., "timings": [...], "comparisons": [...]}``.

    ``comparisons`` follows ``maestro bench engine``'s format: ``{name, unit, ours, baseline,
    baseline_name, ratio}`` with ratio > 1 meaning the C++ kernel is faster.
    """
    torch.set_num_threads(threads)
    with kernels.use("cpp"):  # raises with the fix if the C++ kernels cannot compile
        impls: dict[str, dict[str, Callable[..., Any]]] = {
            "cpp": {op: implementation(op, "cpu") for op in kernels.op_backends("cpu")},
        }
    if with_reference:
        with kernels.use("ref"):
            impls["ref"] = {op: implementation(op, "cpu") for op in kernels.op_backends("cpu")}
    hf_ops = _transformers_ops() if with_transformers else None

    g = torch.Generator().manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    A = -torch.exp(torch.randn(channels, n_state, generator=g) * 0.5)
    D, bias, conv_w, conv_b = randn(channels), randn(channels, scale=0.1), randn(channels, width), randn(channels)
    timings: list[Timing] = []
    for length in lengths:
        timings += _time_prefill(impls, hf_ops, length, randn, A, D, bias, conv_w, conv_b,
                                 n_state, repeats, budget_s, ref_max_length)

    # Decode: one token through the mixer's inner ops.
    weights = {
        "conv_weight": conv_w, "conv_bias": conv_b,
        "x_proj_weight": randn(rank + 2 * n_state, channels, scale=channels**-0.5),
        "dt_proj_weight": randn(channels, rank, scale=rank**-0.5), "dt_proj_bias": bias, "A": A,
        "D": D, "dt_norm_weight": randn(rank), "b_norm_weight": randn(n_state),
        "c_norm_weight": randn(n_state),
    }
    x, xz, dt1 = randn(1, channels), randn(1, channels), randn(1, channels)
    B1, C1 = randn(1, n_state), randn(1, n_state)
    conv_state = randn(1, channels, width - 1)
    ssm_state = torch.randn(1, channels, n_state, generator=g)
    step_ops = {
        "causal_conv1d_update": lambda t: t["causal_conv1d_update"](x, conv_state, conv_w, conv_b, "silu"),
        "selective_state_update": lambda t: t["selective_state_update"](
            ssm_state, x, dt1, A, B1, C1, D, xz, bias, True
        ),
        "mamba_decode_step": lambda t: t["mamba_decode_step"](
            x, xz, conv_state, ssm_state, **weights
        ),
    }
    step_repeats = max(repeats, 50)
    for op, call in step_ops.items():
        timing = Timing(op, 1)
        for name, table in impls.items():
            timing.seconds[name] = _best_seconds(lambda c=call, t=table: c(t), step_repeats, budget_s)
        if hf_ops is not None:
            hf_state = conv_state.clone() if "conv" in op else None
            if op == "causal_conv1d_update":
                hf_conv = hf_ops["causal_conv1d_update"]
                timing.seconds["transformers"] = _best_seconds(
                    lambda s=hf_state, f=hf_conv: f(x, s, conv_w, conv_b), step_repeats, budget_s
                )
            elif op == "selective_state_update":
                hf_step = hf_ops["selective_state_update"]
                timing.seconds["transformers"] = _best_seconds(
                    lambda f=hf_step: f(ssm_state, x, dt1, A, B1, C1, D, xz, bias),
                    step_repeats, budget_s,
                )
            else:
                timing.seconds["transformers"] = _best_seconds(
                    lambda: _unfused_decode(
                        hf_ops, x, xz, conv_state.clone(), ssm_state, weights
                    ),
                    step_repeats, budget_s,
                )
        timings.append(timing)

    timings.append(_time_int8_linear(impls, channels, randn, step_repeats, budget_s))

    comparisons = []
    for timing in timings:
        for baseline in ("ref", "transformers", "torch_linear"):
            ratio = timing.ratio(baseline)
            if ratio is not None:
                comparisons.append({
                    "name": f"{timing.op} L={timing.length}" if timing.length > 1 else timing.op,
                    "unit": "ms",
                    "ours": timing.seconds["cpp"] * 1e3,
                    "baseline": timing.seconds[baseline] * 1e3,
                    "baseline_name": baseline,
                    "ratio": ratio,
                })
    return {
        "machine": _machine(threads, dtype),
        "sizes": {"channels": channels, "n_state": n_state, "rank": rank, "width": width, "batch": 1},
        "timings": [asdict(t) for t in timings],
        "comparisons": comparisons,
    }


def _machine(threads: int, dtype: torch.dtype) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    return {
        "cpu": cpu, "threads": threads, "torch": torch.__version__, "transformers": hf_version,
        "python": platform.python_version(), "dtype": str(dtype).removeprefix("torch."),
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table: one row per op and size, milliseconds and speedups of the C++ kernel."""
    lines = [
        "machine: " + ", ".join(f"{k}={v}" for k, v in result["machine"].items()),
        "sizes: " + ", ".join(f"{k}={v}" for k, v in result["sizes"].items()),
        f"{'op':<24}{'L':>6}{'cpp ms':>10}{'ref ms':>10}{'base ms':>10}{'x ref':>8}{'x base':>8}",
    ]
    for t in result["timings"]:
        s = t["seconds"]

        def ms(key: str, s: dict[str, float] = s) -> str:
            return f"{s[key] * 1e3:10.3f}" if key in s else f"{'-':>10}"

        def ratio(key: str, s: dict[str, float] = s) -> str:
            return f"{s[key] / s['cpp']:8.1f}" if key in s else f"{'-':>8}"

        base = "torch_linear" if "torch_linear" in s else "transformers"
        lines.append(f"{t['op']:<24}{t['length']:>6}{ms('cpp')}{ms('ref')}{ms(base)}"
                     f"{ratio('ref')}{ratio(base)}")
    lines.append("base = transformers' PyTorch fallback (torch F.linear on the unquantised weight for int8_linear)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow fp32 reference")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run(
        lengths=tuple(args.lengths), channels=args.channels, threads=args.threads,
        dtype=getattr(torch, args.dtype), with_reference=not args.no_reference,
        with_transformers=not args.no_transformers,
    )
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
