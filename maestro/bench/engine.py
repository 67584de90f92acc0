"""``maestro bench engine``: our engine against transformers (and llama.cpp) on the same weights.

Two models:

- ``jamba-300m``: random weights with Jamba-v0.1's layer pattern (``ModelConfig.jamba_300m``).
  transformers' ``JambaForCausalLM`` is built from a fixed seed and our model is loaded from its
  state dict, so both run the very same weights.
- ``smollm2-135m``: the default model's GGUF, dequantised to fp32 by us and by transformers
  (``gguf_file=``); llama.cpp runs the quantised file itself when ``llama_cpp`` is importable.

``--quick`` runs a scaled-down Jamba (8 layers, hidden 128) at tiny lengths: a smoke test of
the harness that needs no download.

Metrics: prefill tokens/s at each prompt length, decode tokens/s after a context of N tokens,
peak RSS of the process, and cache bytes per token of context (total cache bytes after N tokens
divided by N; the Mamba state is fixed-size, so a hybrid model's number falls with N).

Speed is measured with ours and transformers loaded in one process and run alternately on the
same inputs (median of ``reps``), so a change in machine load hits both; peak RSS is measured
in a separate subprocess per engine (load plus one prefill and a few decode steps), so it
belongs to one engine only. ``ratio`` is ours/baseline for speeds and baseline/ours for memory:
> 1 always means we are better.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from maestro.bench import machine_info

FULL = {"prefill": [512, 2048, 8192], "decode_after": [512, 8192], "steps": 16, "reps": 3}
QUICK = {"prefill": [32, 64], "decode_after": [32], "steps": 4, "reps": 1}
_SEED = 1234


# ------------------------------------------------------------------------------- the workers


def _jamba_hf_config(quick: bool) -> dict[str, Any]:
    """HF JambaConfig kwargs for the benchmark model (tiny in quick mode)."""
    from model.config import ModelConfig

    cfg = ModelConfig.jamba_300m()
    layers = cfg.num_layers if not quick else 8
    hidden = cfg.hidden_size if not quick else 128
    return {
        "model_type": "jamba", "vocab_size": cfg.vocab_size if not quick else 512,
        "hidden_size": hidden, "intermediate_size": cfg.intermediate_size if not quick else 256,
        "num_hidden_layers": layers, "num_attention_heads": cfg.num_attention_heads if not quick else 4,
        "num_key_value_heads": cfg.num_key_value_heads if not quick else 2,
        "attn_layer_period": 8, "attn_layer_offset": 4, "expert_layer_period": 2,
        "expert_layer_offset": 1, "num_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok, "mamba_d_state": cfg.mamba_d_state,
        "mamba_d_conv": cfg.mamba_d_conv, "mamba_expand": cfg.mamba_expand,
        "max_position_embeddings": 16384, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }


def _hf_jamba(quick: bool) -> tuple[Any, dict[str, Any]]:
    import torch
    from transformers import JambaConfig, JambaForCausalLM

    hf_cfg = _jamba_hf_config(quick)
    torch.manual_seed(_SEED)
    kwargs = {k: v for k, v in hf_cfg.items() if k != "model_type"}
    model: Any = JambaForCausalLM(JambaConfig(**kwargs))
    model.eval()
    return model, hf_cfg


def _cache_nbytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of all tensors reachable from a transformers cache object."""
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_cache_nbytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_cache_nbytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(_cache_nbytes(v, seen) for v in vars(obj).values())
    return 0


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM) in bytes.

    Not ``ru_maxrss``: Linux carries that over fork+exec, so a worker started by a large parent
    (a test run) would report the parent's peak.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # non-Linux fallback


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _Ours:
    """Our engine: prefill in chunks exactly as ``model.generate`` does, decode one token a step."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def _prefill(self, ids: Any, cache: Any) -> None:
        from model.generate import PREFILL_CHUNK

        for start in range(0, ids.shape[1], PREFILL_CHUNK):
            self.model(ids[:, start : start + PREFILL_CHUNK], cache=cache)

    def prefill(self, ids: Any) -> float:
        cache = self.model.new_cache(1, ids.shape[1])
        return _timed(lambda: self._prefill(ids, cache))

    def decode(self, ids: Any, steps: int) -> tuple[float, int]:
        import torch

        cache = self.model.new_cache(1, ids.shape[1] + steps + 1)
        self._prefill(ids, cache)
        nbytes = cache.snapshot().nbytes()
        token = torch.tensor([[5]])

        def run() -> None:
            for _ in range(steps):
                self.model(token, cache=cache)

        return _timed(run), nbytes


class _Transformers:
    """transformers' model: one forward for the prompt (last logits only), then cached steps."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def prefill(self, ids: Any) -> float:
        return _timed(lambda: self.model(ids, use_cache=True, logits_to_keep=1))

    def decode(self, ids: Any, steps: int) -> tuple[float, int]:
        import torch

        past = self.model(ids, use_cache=True, logits_to_keep=1).past_key_values
        nbytes = _cache_nbytes(past)
        token = torch.tensor([[5]])

        def run() -> None:
            p = past
            for _ in range(steps):
                p = self.model(token, past_key_values=p, use_cache=True, logits_to_keep=1).past_key_values

        return _timed(run), nbytes


def _interleaved(engines: dict[str, Any], vocab: int, plan: dict[str, Any]) -> dict[str, Any]:
    """Measure every engine on the same inputs, alternating engines within each repetition.

    Alternating (and taking the median of ``reps``) keeps a change in machine load from landing
    on one engine only: both see the same conditions, so the ratio stays meaningful on a
    shared machine.
    """
    import statistics

    import torch

    reps, steps = plan.get("reps", 1), plan["steps"]
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {
        name: {"prefill": {}, "decode": {}, "cache_bytes_per_token": {}} for name in engines
    }
    with torch.inference_mode():
        warm = torch.randint(0, vocab, (1, plan["prefill"][0]), generator=gen)
        for engine in engines.values():  # allocator, thread pools, kernels compiled on first use
            engine.prefill(warm)
            engine.decode(warm[:, :8], 2)
        for length in plan["prefill"]:
            ids = torch.randint(0, vocab, (1, length), generator=gen)
            times: dict[str, list[float]] = {name: [] for name in engines}
            for _ in range(reps):
                for name, engine in engines.items():
                    times[name].append(engine.prefill(ids))
            for name in engines:
                out[name]["prefill"][length] = length / statistics.median(times[name])
        for length in plan["decode_after"]:
            ids = torch.randint(0, vocab, (1, length), generator=gen)
            times = {name: [] for name in engines}
            for _ in range(reps):
                for name, engine in engines.items():
                    seconds, nbytes = engine.decode(ids, steps)
                    times[name].append(seconds)
                    out[name]["cache_bytes_per_token"][length] = nbytes / length
            for name in engines:
                out[name]["decode"][length] = steps / statistics.median(times[name])
    return out


def _run_llama_cpp(path: Path, plan: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    threads = int(os.environ.get("MAESTRO_BENCH_THREADS", "0")) or os.cpu_count() or 1
    longest = max(plan["prefill"] + plan["decode_after"]) + plan["steps"] + 8
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=longest, n_threads=threads,
                          n_batch=512, verbose=False)
    out: dict[str, Any] = {"prefill": {}, "decode": {}, "cache_bytes_per_token": {}}
    for length in plan["prefill"]:
        llm.reset()
        tokens = [(i * 7919) % 40000 + 100 for i in range(length)]
        out["prefill"][length] = length / _timed(lambda t=tokens: llm.eval(t))
    for length in plan["decode_after"]:
        llm.reset()
        llm.eval([(i * 7919) % 40000 + 100 for i in range(length)])

        def decode() -> None:
            for _ in range(plan["steps"]):
                llm.eval([5])

        out["decode"][length] = plan["steps"] / _timed(decode)
    return out


def _load(which: str, impl: str, spec: dict[str, Any], shared: Any = None) -> tuple[Any, int]:
    """(model, vocab size) of one benchmark model in one engine.

    For the Jamba model ``shared`` is transformers' module: ours is built from its state dict,
    so both engines run the very same (seeded, random) weights.
    """
    import torch

    if which.startswith("jamba"):
        hf_model, hf_cfg = shared if shared is not None else _hf_jamba(spec["quick"])
        if impl == "transformers":
            return hf_model, hf_cfg["vocab_size"]
        from model.config import ModelConfig
        from model.hf import build_model

        config = ModelConfig.from_hf_config(hf_cfg)
        return build_model(config, dict(hf_model.state_dict()), torch.float32, "cpu"), hf_cfg["vocab_size"]
    path = Path(spec["gguf"])
    if impl == "ours":
        from model.gguf import load_gguf

        return load_gguf(path, torch.float32)[0], 49152
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    model.eval()
    return model, 49152


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a subprocess. ``mode == "speed"``: ours and transformers in one process,
    measured alternately. ``mode == "memory"``: one engine alone, for its peak RSS."""
    import torch

    threads = int(os.environ.get("MAESTRO_BENCH_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    plan, which = spec["plan"], spec["model"]
    if spec["impl"] == "llama.cpp":
        start = time.perf_counter()
        result = _run_llama_cpp(Path(spec["gguf"]), plan)
        return {**result, "load_s": time.perf_counter() - start, "peak_rss": _peak_rss()}
    if spec["mode"] == "speed":
        shared = _hf_jamba(spec["quick"]) if which.startswith("jamba") else None
        ours, vocab = _load(which, "ours", spec, shared)
        theirs, _ = _load(which, "transformers", spec, shared)
        return _interleaved({"ours": _Ours(ours), "transformers": _Transformers(theirs)}, vocab, plan)
    before = _peak_rss()
    start = time.perf_counter()
    model, vocab = _load(which, spec["impl"], spec)
    load_s = time.perf_counter() - start
    engine = _Ours(model) if spec["impl"] == "ours" else _Transformers(model)
    with torch.inference_mode():  # one real workload, so activations and caches count too
        engine.decode(torch.randint(0, vocab, (1, plan["prefill"][0])), plan["steps"])
    return {
        "load_s": load_s, "peak_rss": _peak_rss(), "rss_before_load": before,
        "params": sum(p.numel() for p in model.parameters()),
    }


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    code = (
        "import json, sys; from maestro.bench.engine import _worker; "
        "print('@@RESULT@@' + json.dumps(_worker(json.loads(sys.argv[1]))))"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, cwd=root,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            result: dict[str, Any] = json.loads(line.removeprefix("@@RESULT@@"))
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


# ----------------------------------------------------------------------------- orchestration


def _comparisons(model: str, ours: dict[str, Any], base: dict[str, Any], base_name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if "error" in ours or "error" in base:
        return rows

    def add(name: str, unit: str, a: float | None, b: float | None, higher_better: bool) -> None:
        if a is None or b is None or a <= 0 or b <= 0:
            return
        ratio = a / b if higher_better else b / a
        rows.append({"name": f"{model} {name}", "unit": unit, "ours": round(a, 3),
                     "baseline": round(b, 3), "baseline_name": base_name, "ratio": round(ratio, 3)})

    for length, value in ours["prefill"].items():
        add(f"prefill@{length}", "tok/s", value, base["prefill"].get(length), True)
    for length, value in ours["decode"].items():
        add(f"decode after {length}", "tok/s", value, base["decode"].get(length), True)
    for length, value in ours["cache_bytes_per_token"].items():
        add(f"cache bytes/token @{length}", "B/token", value,
            base["cache_bytes_per_token"].get(length), False)
    add("peak RSS", "MiB", ours["peak_rss"] / 2**20, base["peak_rss"] / 2**20, False)
    return rows


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="maestro bench engine (ratio > 1: we are better)")
    for col in ("metric", "unit", "ours", "baseline", "vs", "ratio"):
        table.add_column(col, justify="right" if col in ("ours", "baseline", "ratio") else "left")
    for row in report["comparisons"]:
        table.add_row(row["name"], row["unit"], f"{row['ours']:.1f}", f"{row['baseline']:.1f}",
                      row["baseline_name"], f"{row['ratio']:.2f}")
    console = Console()
    console.print(table)
    for error in report["errors"]:
        console.print(f"[yellow]skipped:[/yellow] {error}")
    console.print(f"settings: {json.dumps(report['settings'])}")
    console.print(f"machine: {json.dumps(report['machine'])}")


def main(
    json_output: bool = False, quick: bool = False, plan: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run the benchmark; print a table (or nothing with ``json_output``) and return the report.

    ``plan`` overrides the lengths (keys as in ``FULL``), e.g. for a shorter run on a busy box.
    """
    import importlib.metadata as md

    from model.registry import DEFAULT_MODEL, pull

    plan = plan or (QUICK if quick else FULL)
    # --quick is a smoke test of the harness: the tiny Jamba only (seconds, no download).
    models = ("jamba-quick",) if quick else ("jamba-300m", "smollm2-135m")
    gguf_path = pull(DEFAULT_MODEL) if "smollm2-135m" in models else None
    impls = ["ours", "transformers"]
    try:
        import llama_cpp  # noqa: F401

        has_llama_cpp = True
    except ImportError:
        has_llama_cpp = False
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []

    def spawn(spec: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        result = _spawn({**spec, "plan": plan, "quick": quick, "gguf": str(gguf_path)})
        # progress on stderr, so a long run shows life and --json stdout stays one object
        label = f"{spec['model']}/{spec['impl']} ({spec['mode']})"
        print(f"bench engine: {label} done in {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
        if "error" in result:
            errors.append(f"{label}: {result['error']}")
        return result

    for model_name in models:
        speed = spawn({"model": model_name, "impl": "ours+transformers", "mode": "speed"})
        for impl in impls:
            memory = spawn({"model": model_name, "impl": impl, "mode": "memory"})
            if "error" in speed or "error" in memory:
                results[f"{model_name}/{impl}"] = {"error": speed.get("error") or memory.get("error")}
            else:
                results[f"{model_name}/{impl}"] = {**speed[impl], **memory}
        if model_name == "smollm2-135m" and has_llama_cpp:
            results[f"{model_name}/llama.cpp"] = spawn(
                {"model": model_name, "impl": "llama.cpp", "mode": "memory"}
            )
    if not has_llama_cpp and not quick:
        errors.append("llama.cpp: llama_cpp (llama-cpp-python) is not installed")
    comparisons: list[dict[str, Any]] = []
    for model_name in models:
        ours = results[f"{model_name}/ours"]
        for impl in ("transformers", "llama.cpp"):
            if f"{model_name}/{impl}" in results:
                comparisons += _comparisons(model_name, ours, results[f"{model_name}/{impl}"], impl)
    machine = machine_info()
    for package in ("torch", "transformers", "gguf", "llama_cpp_python"):
        with contextlib.suppress(md.PackageNotFoundError):
            machine[f"{package}_version"] = md.version(package.replace("_", "-"))
    import torch

    report = {
        "benchmark": "engine",
        "quick": quick,
        "settings": {**plan, "dtype": "float32", "threads": int(os.environ.get("MAESTRO_BENCH_THREADS", "0"))
                     or torch.get_num_threads(), "jamba_config": _jamba_hf_config(quick)},
        "machine": machine,
        "comparisons": comparisons,
        "results": results,
        "errors": errors,
    }
    if not json_output:
        _print_table(report)
    return report
