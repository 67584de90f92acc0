"""``maestro bench engine``: our engine against transformers (and llama.cpp) on the same weights.

Two models, each run by several engines ("ours" in fp32, bf16, int8 or int4 weights;
transformers; llama.cpp). Ours in bf16 computes in bf16 where the CPU multiplies bf16 natively,
else in fp32 on bf16 weights (``quantize="bf16"``); transformers' bf16 engines run only where
it is native (elsewhere PyTorch emulates the matmul, 60-80x slower than fp32):

- ``jamba-300m``: random weights with Jamba-v0.1's layer pattern (``ModelConfig.jamba_300m``).
  transformers' ``JambaForCausalLM`` is built from a fixed seed and our model is loaded from its
  state dict, so both run the very same weights. ``llama-300m``, transformers'
  ``LlamaForCausalLM`` of about the same size in bf16 (``ModelConfig.llama_300m``), is the
  transformer the hybrid has to beat.
- ``smollm2-135m``: the default model's GGUF, dequantised by us and by transformers
  (``gguf_file=``); llama.cpp runs the quantised file itself when ``llama_cpp`` is importable,
  alternated with the others in the same process like any engine.

``--quick`` runs a scaled-down Jamba (8 layers, hidden 128) at tiny lengths: a smoke test of
the harness that needs no download.

Metrics: prefill tokens/s at each prompt length; decode tokens/s after a context of N tokens
(measured right after the N-token prefill); cache bytes per token of context (total cache bytes
after N tokens divided by N; the Mamba state is fixed-size, so a hybrid's number falls with N),
and the cache a 32k-token context would hold, extrapolated linearly from two measured lengths;
the decode bandwidth bound (bytes of the weights one token reads / this machine's read
bandwidth, a 1 GiB sum probed between the decode repetitions it is compared with); the prefill
matmul bound (the matmul and attention FLOPs our fp32 prefill of N tokens runs, counted by
PyTorch's FlopCounterMode, at this machine's fp32 matmul rate, the best of three 2048x2048
products probed after each prefill length); peak RSS of a process that loads one engine and
prefills the longest prompt.

Speed is measured with all of a model's engines loaded in one process and run alternately on
the same inputs, every prompt length in every repetition (median of ``reps``), so a change in
machine load hits every engine and every length; peak RSS
is measured in a separate subprocess per engine, so it belongs to one engine only. ``ratio`` is
ours/baseline for speeds and baseline/ours for memory: > 1 always means we are better.
Comparisons that the Kernels issue sets a goal for carry a ``target`` ratio.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from maestro.bench import machine_info

# probe_mib: the fp32 array summed to measure read bandwidth (far larger than the caches);
# matmul_probe (default 2048): the side of the square fp32 product that measures the matmul rate.
FULL = {"prefill": [512, 2048, 8192], "decode_after": [512, 8192], "steps": 16, "reps": 3,
        "probe_mib": 1024}
QUICK = {"prefill": [32, 64], "decode_after": [32], "steps": 4, "reps": 1, "probe_mib": 128}
LONG_CONTEXT = 32768  # the context the cache comparison is extrapolated to
_SEED = 1234

# Engines per model, as "implementation/weights". The first is the one whose peak RSS and
# cache are compared with the second. transformers' bf16 engines run only where the CPU
# multiplies bf16 natively, llama.cpp only where llama-cpp-python is installed (see _engines).
ENGINES = {
    "jamba-quick": ["ours/fp32", "transformers/fp32", "ours/int8", "ours/bf16"],
    "jamba-300m": ["ours/fp32", "transformers/fp32", "ours/int8", "llama-300m/fp32", "ours/bf16",
                   "llama-300m/bf16"],
    "smollm2-135m": ["ours/fp32", "transformers/fp32", "ours/int8", "ours/int4", "ours/bf16",
                     "transformers/bf16", "llama.cpp/Q4_1"],
}


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (``model.quant.native_bf16``)."""
    from model.quant import native_bf16 as native

    return bool(native())


def has_llama_cpp() -> bool:
    """Whether llama-cpp-python is importable (it is not a dependency: it builds from source)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _engines(model: str) -> list[str]:
    return [
        e for e in ENGINES[model]
        if (native_bf16() or e == "ours/bf16" or not e.endswith("/bf16"))
        and (has_llama_cpp() or not e.startswith("llama.cpp"))
    ]


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


def _llama_hf_config() -> dict[str, Any]:
    """HF LlamaConfig kwargs of ``ModelConfig.llama_300m`` (the same-size transformer)."""
    from model.config import ModelConfig

    cfg = ModelConfig.llama_300m()
    return {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings, "tie_word_embeddings": False,
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


def _read_bandwidth(data: Any) -> float:
    """Bytes/s this process reads from memory: best of 3 sums over ``data`` (fp32, ``probe_mib``)."""
    best = min(_timed(data.sum) for _ in range(3))
    return float(data.nbytes / best)


def _matmul_rate(square: Any) -> float:
    """FLOP/s of this process's fp32 matmul: best of 3 products of ``square`` by itself."""
    n = square.shape[0]
    best = min(_timed(lambda: square @ square) for _ in range(3))
    return float(2 * n**3 / best)


def _attention_flops(query: Sequence[int], key: Sequence[int], value: Sequence[int],
                     is_causal: bool) -> int:
    """FLOPs of attention over shapes (B, H, L, hd) and (B, Hkv, T, hd): ``2·(hd + hd_v)`` per
    (query head, key) pair scored; ``is_causal`` is PyTorch's top-left-aligned mask."""
    batch, heads, queries, dim = query
    keys, value_dim = key[-2], value[-1]
    if not is_causal:
        pairs = queries * keys
    elif queries <= keys:
        pairs = queries * (queries + 1) // 2
    else:
        pairs = keys * (keys + 1) // 2 + (queries - keys) * keys
    return 2 * batch * heads * pairs * (dim + value_dim)


def _prefill_flops(engine: _Ours, ids: Any) -> int:
    """The matmul and attention FLOPs one prefill of ``ids`` runs in our engine, counted by
    PyTorch's FlopCounterMode (the scan, conv, norms and activations are not counted). It knows
    ``mm``/``bmm``; the attention ops and our matvec kernel are given their formulas here."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def sdpa(query: Sequence[int], key: Sequence[int], value: Sequence[int],
             attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
             *args: Any, **kwargs: Any) -> int:
        return _attention_flops(query, key, value, is_causal)

    def cpu_flash(query: Sequence[int], key: Sequence[int], value: Sequence[int],
                  dropout_p: float = 0.0, is_causal: bool = False,
                  *args: Any, **kwargs: Any) -> int:
        return _attention_flops(query, key, value, is_causal)

    def matvec(x: Sequence[int], weight: Sequence[int], *args: Any, **kwargs: Any) -> int:
        return 2 * math.prod(x[:-1]) * weight[0] * weight[1]

    from model.kernels.dispatch import implementation

    implementation("linear", ids.device.type)  # loads the backend, so its ops exist below
    aten = torch.ops.aten
    formulas: dict[Any, Any] = {aten.scaled_dot_product_attention: sdpa}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_flash
    if hasattr(torch.ops.model_kernels, "linear_matvec"):  # the C++ backend is loaded
        formulas[torch.ops.model_kernels.linear_matvec] = matvec
    counter = FlopCounterMode(display=False, custom_mapping=formulas)
    with counter:
        engine.run(ids, 0)
    return int(counter.get_total_flops())


def _decode_weight_bytes(model: Any) -> int:
    """Bytes of weights one decode step reads: everything but the embedding table (one row is
    read) and the experts a token is not routed to (top-k of E)."""
    from model.quant import weight_bytes

    total = weight_bytes(model)
    embedding = model.embed_tokens.weight
    if getattr(model.lm_head, "weight", None) is not embedding:
        total -= embedding.nbytes
    config = model.config
    if config.num_experts > 1:
        unused = 1 - config.num_experts_per_tok / config.num_experts
        for block in model.layers:
            if hasattr(block.ffn, "router"):
                expert_bytes = weight_bytes(block.ffn) - weight_bytes(block.ffn.router)
                total -= int(unused * expert_bytes)
    return int(total)


class _Ours:
    """Our engine: prefill in chunks exactly as ``model.generate`` does, decode one token a step."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def run(self, ids: Any, steps: int) -> tuple[float, float, int]:
        """(prefill seconds, seconds for ``steps`` decode steps after it, cache bytes after ids)."""
        import torch

        from model.generate import prefill_chunk

        cache = self.model.new_cache(1, ids.shape[1] + steps + 1)
        chunk = prefill_chunk(ids.device)

        def prefill() -> None:
            for start in range(0, ids.shape[1], chunk):
                self.model(ids[:, start : start + chunk], cache=cache, logits_to_keep=1)

        prefill_s = _timed(prefill)
        nbytes = cache.snapshot().nbytes()
        token = torch.tensor([[5]])

        def decode() -> None:
            for _ in range(steps):
                self.model(token, cache=cache)

        return prefill_s, _timed(decode), nbytes


class _Transformers:
    """transformers' model: one forward for the prompt (last logits only), then cached steps."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def run(self, ids: Any, steps: int) -> tuple[float, float, int]:
        import torch

        out: list[Any] = []
        prefill_s = _timed(lambda: out.append(self.model(ids, use_cache=True, logits_to_keep=1)))
        past = out[0].past_key_values
        nbytes = _cache_nbytes(past)
        token = torch.tensor([[5]])

        def decode() -> None:
            p = past
            for _ in range(steps):
                p = self.model(token, past_key_values=p, use_cache=True, logits_to_keep=1).past_key_values

        return prefill_s, _timed(decode), nbytes


def _interleaved(
    engines: dict[str, Any], vocab: int, plan: dict[str, Any],
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every engine on the same inputs, alternating engines and prompt lengths.

    Each repetition runs every prompt length, and at each length every engine, in turn; the
    figures are medians over ``reps``. So a change in machine load lands on all engines and all
    lengths alike, and the ratios between them (ours vs a baseline, decode after a long context
    vs after a short one) stay meaningful on a shared machine whose read bandwidth drifts
    between ~20 and ~45 GB/s within the hour. Decode is timed right after the prefill of the
    same prompt. After each length with decode, the read bandwidth is probed too
    (``bandwidth_bytes_per_s``, the median per context length), so a decode's bandwidth bound
    comes from the same minutes as the decode it is compared with; after each prefill length,
    the fp32 matmul rate (``matmul_flops_per_s``), for the prefill's matmul bound.
    ``progress(message)``, if given, hears of each length measured (a full run takes ~15
    minutes per model).
    """
    import statistics

    import torch

    reps, steps = plan.get("reps", 1), plan["steps"]
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {
        name: {"prefill": {}, "decode": {}, "cache_bytes_per_token": {}} for name in engines
    }
    out["bandwidth_bytes_per_s"], out["matmul_flops_per_s"] = {}, {}
    probe = torch.ones(plan.get("probe_mib", 1024) * 2**18)
    side = plan.get("matmul_probe", 2048)  # 2048: the product ENVIRONMENT.md quotes
    square = torch.ones(side, side)
    lengths = sorted(set(plan["prefill"]) | set(plan["decode_after"]))
    prompts = {n: torch.randint(0, vocab, (1, n), generator=gen) for n in lengths}
    prefill: dict[tuple[str, int], list[float]] = {(name, n): [] for name in engines for n in lengths}
    decode: dict[tuple[str, int], list[float]] = {(name, n): [] for name in engines for n in lengths}
    bandwidth: dict[int, list[float]] = {n: [] for n in plan["decode_after"]}
    matmul: dict[int, list[float]] = {n: [] for n in plan["prefill"]}
    with torch.inference_mode():
        warm = torch.randint(0, vocab, (1, plan["prefill"][0]), generator=gen)
        for engine in engines.values():  # allocator, thread pools, kernels compiled on first use
            engine.run(warm, 2)
        for rep in range(reps):
            for n in lengths:
                started = time.perf_counter()
                with_decode = n in plan["decode_after"]
                for name, engine in engines.items():
                    prefill_s, decode_s, nbytes = engine.run(prompts[n], steps if with_decode else 0)
                    prefill[name, n].append(prefill_s)
                    decode[name, n].append(decode_s)
                    if nbytes is not None:
                        out[name]["cache_bytes_per_token"][n] = nbytes / n
                if with_decode:
                    bandwidth[n].append(_read_bandwidth(probe))
                if n in matmul:
                    matmul[n].append(_matmul_rate(square))
                if progress is not None:
                    progress(f"repetition {rep + 1}/{reps}, {n} tokens: "
                             f"{time.perf_counter() - started:.0f} s")
    for n, probes in bandwidth.items():
        out["bandwidth_bytes_per_s"][n] = statistics.median(probes)
    for n, probes in matmul.items():
        out["matmul_flops_per_s"][n] = statistics.median(probes)
    for name in engines:
        for n in plan["prefill"]:
            out[name]["prefill"][n] = n / statistics.median(prefill[name, n])
        for n in plan["decode_after"]:
            out[name]["decode"][n] = steps / statistics.median(decode[name, n])
    return out


class _LlamaCpp:
    """llama.cpp on the quantised GGUF, driven like the others: one ``eval`` of the prompt, then
    one ``eval`` per decoded token. It runs in the speed worker's process, alternated with our
    engines, so it sees the same machine minutes (two OpenMP runtimes then share the process;
    only one engine runs at a time)."""

    def __init__(self, path: Path, plan: dict[str, Any]) -> None:
        import llama_cpp

        threads = int(os.environ.get("MAESTRO_BENCH_THREADS", "0")) or os.cpu_count() or 1
        longest = max(plan["prefill"] + plan["decode_after"]) + plan["steps"] + 8
        self.llm: Any = llama_cpp.Llama(
            model_path=str(path), n_ctx=longest, n_threads=threads, n_threads_batch=threads,
            n_batch=512, verbose=False,
        )

    def run(self, ids: Any, steps: int) -> tuple[float, float, None]:
        """(prefill seconds, seconds for ``steps`` decode steps, no cache figure)."""
        self.llm.reset()  # the next eval overwrites the KV cache from position 0
        tokens = ids[0].tolist()
        prefill_s = _timed(lambda: self.llm.eval(tokens))

        def decode() -> None:
            for _ in range(steps):
                self.llm.eval([5])

        return prefill_s, _timed(decode), None


def _load(which: str, engine: str, spec: dict[str, Any], shared: Any = None) -> tuple[Any, int]:
    """(model, vocab size) of one benchmark model in one engine ("impl/weights").

    For the Jamba model ``shared`` is transformers' fp32 module: ours is built from its state
    dict, so all engines run the very same (seeded, random) weights.
    """
    import torch

    impl, weights = engine.split("/")
    # bf16 arithmetic only where the CPU has it; elsewhere ours keeps bf16 weights, fp32 compute
    bf16_compute = weights == "bf16" and (impl != "ours" or native_bf16())
    dtype: Any = torch.bfloat16 if bf16_compute else torch.float32
    if impl == "llama-300m":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(_SEED)
        llama: Any = LlamaForCausalLM(LlamaConfig(**_llama_hf_config())).to(dtype)
        return llama.eval(), llama.config.vocab_size
    if which.startswith("jamba"):
        hf_model, hf_cfg = shared if shared is not None else _hf_jamba(spec["quick"])
        if impl == "transformers":
            return hf_model.to(dtype), hf_cfg["vocab_size"]
        from model.config import ModelConfig
        from model.hf import build_model

        config = ModelConfig.from_hf_config(hf_cfg)
        state = {k: v.to(dtype) for k, v in hf_model.state_dict().items()}
        ours = build_model(config, state, dtype, "cpu")
    else:
        path = Path(spec["gguf"])
        if impl == "transformers":
            from transformers import AutoModelForCausalLM

            model: Any = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=dtype
            )
            return model.eval(), model.config.vocab_size
        from model.gguf import load_gguf

        ours = load_gguf(path, dtype)[0]
    if weights in ("int8", "int4") or (weights == "bf16" and not bf16_compute):
        from model.quant import quantize_

        quantize_(ours, weights)
    return ours.eval(), ours.config.vocab_size


# A fixed English text for the quality rows (perplexity of each weight format on it).
QUALITY_TEXT = (
    "The river rose slowly through the night, and by morning the lower fields were under water. "
    "Farmers moved their animals to the hill behind the church, where the ground stayed dry. "
    "The mayor called a meeting in the school hall to decide how the town would pay for a new "
    "wall along the bank. Some argued that the old wall had only failed because nobody had "
    "cleared the drains in autumn; others said the river had changed its course and that no "
    "repair would hold for long. In the end they agreed to ask an engineer from the city to "
    "measure the flow before spending any money. Until then, volunteers would fill sandbags "
    "every evening, and the bakery would send bread and soup to anyone working on the bank."
)


def _quality(gguf: Path) -> dict[str, Any]:
    """Perplexity of QUALITY_TEXT and the logit error against fp32, per weight format."""
    import math

    import torch

    from model import load

    out: dict[str, Any] = {}
    reference = None
    for weights in ("none", "int8", "int4", "bf16"):
        lm = load(gguf, quantize=weights, download=False)
        ids = torch.tensor([lm.encode(QUALITY_TEXT)])
        with torch.inference_mode():
            logits = lm.model(ids)[0, :-1]  # (L-1, V) fp32
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
        name = "fp32" if weights == "none" else weights
        out[name] = {"perplexity": math.exp(nll), "tokens": ids.shape[1]}
        if reference is None:
            reference = logits
        else:
            out[name]["max_logit_error"] = (logits - reference).abs().max().item()
            out[name]["top1_agreement"] = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    return out


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a subprocess. ``mode == "speed"``: all of a model's engines in one process,
    measured alternately. ``mode == "memory"``: one engine alone, for its peak RSS."""
    import torch

    threads = int(os.environ.get("MAESTRO_BENCH_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    plan, which = spec["plan"], spec["model"]
    if spec["engine"] == "quality":
        return _quality(Path(spec["gguf"]))
    if spec["mode"] == "speed":
        shared = _hf_jamba(spec["quick"]) if which.startswith("jamba") else None
        models: dict[str, Any] = {}
        engines: dict[str, Any] = {}
        # transformers' fp32 Jamba last: ours are built from its weights before it may be cast.
        for name in sorted(_engines(which), key=lambda e: e == "transformers/fp32"):
            if name.startswith("llama.cpp"):
                engines[name] = _LlamaCpp(Path(spec["gguf"]), plan)
                continue
            models[name], vocab = _load(which, name, spec, shared)
            engines[name] = _Ours(models[name]) if name.startswith("ours") else _Transformers(models[name])

        def progress(message: str) -> None:  # relayed by _spawn while the worker runs
            print(f"bench engine:   {which} {message}", file=sys.stderr, flush=True)

        result = _interleaved({name: engines[name] for name in _engines(which)}, vocab, plan, progress)
        for name, m in models.items():
            if name.startswith("ours"):
                result[name]["decode_weight_bytes"] = _decode_weight_bytes(m)
        if "ours/fp32" in engines:  # counted once per length, after the timed runs
            gen = torch.Generator().manual_seed(0)
            with torch.inference_mode():
                result["ours/fp32"]["prefill_flops"] = {
                    n: _prefill_flops(engines["ours/fp32"],
                                      torch.randint(0, vocab, (1, n), generator=gen))
                    for n in plan["prefill"]}
        return result
    before = _peak_rss()
    start = time.perf_counter()
    model, vocab = _load(which, spec["engine"], spec)
    load_s = time.perf_counter() - start
    engine = _Ours(model) if spec["engine"].startswith("ours") else _Transformers(model)
    length = max(plan["prefill"])
    with torch.inference_mode():  # one real workload, so activations and caches count too
        engine.run(torch.randint(0, vocab, (1, length)), plan["steps"])
    return {
        "load_s": load_s, "peak_rss": _peak_rss(), "rss_before_load": before,
        "rss_prompt_tokens": length, "params": sum(p.numel() for p in model.parameters()),
    }


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    code = (
        "import json, sys; from maestro.bench.engine import _worker; "
        "print('@@RESULT@@' + json.dumps(_worker(json.loads(sys.argv[1]))))"
    )
    root = Path(__file__).resolve().parents[2]
    last_lines: list[str] = []  # of the worker's stderr, for the error message
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(spec)], stdout=stdout, stderr=subprocess.PIPE,
            text=True, cwd=root, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        assert proc.stderr is not None
        for line in proc.stderr:  # the worker's progress lines are passed on as they come
            if line.startswith("bench engine:"):
                print(line, end="", file=sys.stderr, flush=True)
            else:
                last_lines = [*last_lines[-4:], line.rstrip()]
        returncode = proc.wait()
        stdout.seek(0)
        output = stdout.read()
    for line in output.splitlines():
        if line.startswith("@@RESULT@@"):
            result: dict[str, Any] = _int_keys(json.loads(line.removeprefix("@@RESULT@@")))
            return result
    tail = last_lines or output.strip().splitlines()[-5:]
    return {"error": f"exit {returncode}: " + " | ".join(tail)}


def _int_keys(value: Any) -> Any:
    """JSON turned the token-count keys into strings; turn them back."""
    if isinstance(value, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------- orchestration


class _Rows:
    """The ``comparisons`` list: {name, unit, ours, baseline, baseline_name, ratio[, target]}."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, unit: str, ours: float | None, base: float | None, base_name: str,
            higher_better: bool = True, target: float | None = None) -> None:
        if ours is None or base is None or ours <= 0 or base <= 0:
            return
        ratio = ours / base if higher_better else base / ours
        row = {"name": name, "unit": unit, "ours": round(ours, 3), "baseline": round(base, 3),
               "baseline_name": base_name, "ratio": round(ratio, 3)}
        if target is not None:
            row["target"] = target
        self.rows.append(row)


def _at(result: dict[str, Any], metric: str, length: int) -> float | None:
    value = result.get(metric, {}).get(length)
    return None if value is None else float(value)


def _long_context_bytes(result: dict[str, Any], lengths: list[int]) -> float | None:
    """Cache bytes at LONG_CONTEXT, on the line through the two longest measured lengths."""
    per_token = result.get("cache_bytes_per_token", {})
    if len(lengths) < 2:
        return None
    short, long = sorted(lengths)[-2:]
    if short not in per_token or long not in per_token:
        return None
    a, b = per_token[short] * short, per_token[long] * long
    slope = (b - a) / (long - short)
    return float(b + slope * (LONG_CONTEXT - long))


def _comparisons(model: str, results: dict[str, dict[str, Any]], plan: dict[str, Any]) -> list[dict[str, Any]]:
    rows = _Rows()
    get = results.get
    ours, hf = get(f"{model}/ours/fp32", {}), get(f"{model}/transformers/fp32", {})
    lengths = sorted(plan["prefill"])
    longer = [n for n in lengths if n >= 2048]
    for n in lengths:
        rows.add(f"{model} prefill@{n} fp32", "tok/s", _at(ours, "prefill", n), _at(hf, "prefill", n),
                 "transformers fp32", target=3.0 if model == "jamba-300m" and n in longer else None)
    rates = get(f"{model}/speed", {}).get("matmul_flops_per_s", {})
    for n in lengths:
        flops, rate = ours.get("prefill_flops", {}).get(n), rates.get(n)
        if flops and rate:  # no prefill of n tokens can run faster than its FLOPs at that rate
            rows.add(f"{model} prefill@{n} fp32 vs matmul bound", "tok/s", _at(ours, "prefill", n),
                     n * rate / flops,
                     f"bound ({rate / 1e9:.0f} GFLOP/s / {flops / n / 1e9:.3g} GFLOP/token)",
                     target=0.6 if model == "jamba-300m" and n in longer else None)
    for n in plan["decode_after"]:
        rows.add(f"{model} decode after {n} fp32", "tok/s", _at(ours, "decode", n),
                 _at(hf, "decode", n), "transformers fp32")
        rows.add(f"{model} cache bytes/token @{n}", "B/token", _at(ours, "cache_bytes_per_token", n),
                 _at(hf, "cache_bytes_per_token", n), "transformers fp32", higher_better=False)
    first, last = min(plan["decode_after"]), max(plan["decode_after"])
    if last != first:
        rows.add(f"{model} decode after {last} vs after {first} (ours fp32)", "tok/s",
                 _at(ours, "decode", last), _at(ours, "decode", first), f"ours after {first}",
                 target=0.9 if model == "jamba-300m" else None)
    bandwidth = get(f"{model}/speed", {}).get("bandwidth_bytes_per_s", {}).get(first)
    for weights in ("fp32", "bf16", "int8", "int4"):
        measured = get(f"{model}/ours/{weights}", {})
        weight_bytes = measured.get("decode_weight_bytes")
        if bandwidth and weight_bytes:
            rows.add(f"{model} decode after {first} {weights} vs bandwidth bound", "tok/s",
                     _at(measured, "decode", first), bandwidth / weight_bytes,
                     f"bound ({bandwidth / 1e9:.1f} GB/s / {weight_bytes / 2**20:.0f} MiB)",
                     target=0.9 if model == "jamba-300m" and weights == "fp32" else None)
    half = get(f"{model}/ours/bf16")
    if half is not None:  # what half the weight bytes buys
        for n in plan["decode_after"]:
            rows.add(f"{model} decode after {n} bf16 weights", "tok/s", _at(half, "decode", n),
                     _at(ours, "decode", n), "ours fp32")
    for weights in ("bf16", "int8", "int4"):  # what widening narrow weights per call costs
        narrow = get(f"{model}/ours/{weights}")
        if narrow is None:
            continue
        for n in lengths:
            rows.add(f"{model} prefill@{n} {weights} weights", "tok/s", _at(narrow, "prefill", n),
                     _at(ours, "prefill", n), "ours fp32")
    for bits in ("int8", "int4"):
        quant = get(f"{model}/ours/{bits}")
        if quant is None:
            continue
        for n in plan["decode_after"]:
            rows.add(f"{model} decode after {n} {bits}", "tok/s", _at(quant, "decode", n),
                     _at(hf, "decode", n), "transformers fp32",
                     target=3.0 if model == "jamba-300m" and bits == "int8" else None)
            cpp = get(f"{model}/llama.cpp/Q4_1")
            if cpp is not None:
                rows.add(f"{model} decode after {n} {bits}", "tok/s", _at(quant, "decode", n),
                         _at(cpp, "decode", n), "llama.cpp Q4_1", target=1.0)
    if model == "jamba-300m":  # the hybrid against the same-size transformer
        for dtype in ("fp32", "bf16"):
            hybrid, llama = get(f"{model}/ours/{dtype}"), get(f"{model}/llama-300m/{dtype}")
            llama_name = f"transformers Llama-300M {dtype}"
            if dtype == "bf16" and llama is None:  # emulated bf16 here: its fastest form instead
                llama, llama_name = get(f"{model}/llama-300m/fp32"), "transformers Llama-300M fp32"
            if hybrid is None or llama is None:
                continue
            for n in lengths:
                rows.add(f"{model} prefill@{n} {dtype} vs Llama", "tok/s", _at(hybrid, "prefill", n),
                         _at(llama, "prefill", n), llama_name,
                         target=1.0 if n == max(lengths) else None)
            for n in plan["decode_after"]:
                rows.add(f"{model} decode after {n} {dtype} vs Llama", "tok/s",
                         _at(hybrid, "decode", n), _at(llama, "decode", n), llama_name)
            if llama_name.endswith(dtype):  # same cache dtype on both sides
                rows.add(f"{model} cache @{LONG_CONTEXT} tokens {dtype}", "MiB",
                         _mib(_long_context_bytes(hybrid, plan["decode_after"])),
                         _mib(_long_context_bytes(llama, plan["decode_after"])),
                         llama_name, higher_better=False, target=6.0)
    if model == "smollm2-135m":
        hf16, cpp = get(f"{model}/transformers/bf16", {}), get(f"{model}/llama.cpp/Q4_1", {})
        best = max(
            (name for name in _engines(model) if name.startswith("ours")),
            key=lambda name: _at(get(f"{model}/{name}", {}), "prefill", lengths[0]) or 0.0,
        )
        for base, base_name in ((hf16, "transformers bf16"), (cpp, "llama.cpp Q4_1")):
            rows.add(f"{model} prefill@{lengths[0]} (ours {best.split('/')[1]})", "tok/s",
                     _at(get(f"{model}/{best}", {}), "prefill", lengths[0]),
                     _at(base, "prefill", lengths[0]), base_name, target=1.0)
    quality = get(f"{model}/quality", {})
    for bits in ("int8", "int4", "bf16"):
        if bits in quality and "fp32" in quality:
            rows.add(f"{model} perplexity {bits} (max logit error "
                     f"{quality[bits]['max_logit_error']:.2f})", "ppl",
                     quality[bits]["perplexity"], quality["fp32"]["perplexity"], "ours fp32",
                     higher_better=False)
    peak = results.get(f"{model}/ours/fp32/memory", {}).get("peak_rss")
    hf_peak = results.get(f"{model}/transformers/fp32/memory", {}).get("peak_rss")
    if peak and hf_peak:
        prompt = results[f"{model}/ours/fp32/memory"]["rss_prompt_tokens"]
        rows.add(f"{model} peak RSS (load + {prompt}-token prefill)", "MiB", peak / 2**20,
                 hf_peak / 2**20, "transformers fp32", higher_better=False)
    return rows.rows


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="maestro bench engine (ratio > 1: we are better)")
    for col in ("metric", "unit", "ours", "baseline", "vs", "ratio", "target"):
        table.add_column(col, justify="right" if col in ("ours", "baseline", "ratio", "target") else "left")
    for row in report["comparisons"]:
        target = row.get("target")
        mark = "" if target is None else f"{target:g} " + ("ok" if row["ratio"] >= target else "MISSED")
        table.add_row(row["name"], row["unit"], f"{row['ours']:.1f}", f"{row['baseline']:.1f}",
                      row["baseline_name"], f"{row['ratio']:.2f}", mark)
    console = Console()
    if not console.is_terminal:  # a log file: do not wrap the metric names
        console = Console(width=160)
    console.print(table)
    for error in report["errors"]:
        console.print(f"[yellow]skipped:[/yellow] {error}")
    console.print(f"settings: {json.dumps(report['settings'])}")
    console.print(f"machine: {json.dumps(report['machine'])}")


def _plan_for(model: str, plan: dict[str, Any]) -> dict[str, Any]:
    """The plan with lengths capped to the model's context (SmolLM2 holds 8192 tokens)."""
    if model != "smollm2-135m":
        return plan
    room = 8192 - plan["steps"] - 8
    return {**plan, "prefill": sorted({min(n, room) for n in plan["prefill"]}),
            "decode_after": sorted({min(n, room) for n in plan["decode_after"]})}


def main(
    json_output: bool = False, quick: bool = False, plan: dict[str, Any] | None = None,
    models: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; print a table (or nothing with ``json_output``) and return the report.

    ``plan`` overrides the lengths (keys as in ``FULL``), e.g. for a shorter run on a busy box;
    ``models`` picks some of ``jamba-300m`` and ``smollm2-135m``.
    """
    import importlib.metadata as md

    from model.registry import DEFAULT_MODEL, pull

    base_plan = plan or (QUICK if quick else FULL)
    # --quick is a smoke test of the harness: the tiny Jamba only (seconds, no download).
    models = ("jamba-quick",) if quick else (models or ("jamba-300m", "smollm2-135m"))
    unknown = set(models) - set(ENGINES)
    if unknown:
        raise ValueError(f"unknown benchmark model(s) {sorted(unknown)}; choose from {sorted(ENGINES)}")
    gguf_path = pull(DEFAULT_MODEL) if "smollm2-135m" in models else None
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    plans = {name: _plan_for(name, base_plan) for name in models}

    def spawn(model_name: str, engine: str, mode: str) -> dict[str, Any]:
        started = time.perf_counter()
        result = _spawn({"model": model_name, "engine": engine, "mode": mode,
                         "plan": plans[model_name], "quick": quick, "gguf": str(gguf_path)})
        # progress on stderr, so a long run shows life and --json stdout stays one object
        label = f"{model_name}/{engine} ({mode})"
        print(f"bench engine: {label} done in {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
        if "error" in result:
            errors.append(f"{label}: {result['error']}")
        return result

    for model_name in models:
        speed = spawn(model_name, "all", "speed")
        if "error" not in speed:
            results[f"{model_name}/speed"] = {key: speed.pop(key) for key in (
                "bandwidth_bytes_per_s", "matmul_flops_per_s")}
            for engine, measured in speed.items():
                results[f"{model_name}/{engine}"] = measured
        for engine in ENGINES[model_name][:2]:
            results[f"{model_name}/{engine}/memory"] = spawn(model_name, engine, "memory")
        if model_name == "smollm2-135m":
            results[f"{model_name}/quality"] = spawn(model_name, "quality", "quality")
    if not has_llama_cpp() and not quick:
        errors.append("llama.cpp: llama_cpp (llama-cpp-python) is not installed")
    if not native_bf16() and not quick:
        errors.append("transformers bf16 engines: this CPU has no native bf16 matmul (no "
                      "avx512_bf16 or amx_bf16), so they were not run; ours/bf16 keeps bf16 "
                      "weights and computes in fp32, and its hybrid-vs-Llama rows compare with "
                      "transformers' Llama-300M in fp32")
    comparisons: list[dict[str, Any]] = []
    for model_name in models:
        comparisons += _comparisons(model_name, results, plans[model_name])
    machine = machine_info()
    for package in ("torch", "transformers", "gguf", "llama_cpp_python"):
        with contextlib.suppress(md.PackageNotFoundError):
            machine[f"{package}_version"] = md.version(package.replace("_", "-"))
    import torch

    report = {
        "benchmark": "engine",
        "quick": quick,
        "settings": {"plans": plans, "engines": {m: _engines(m) for m in models},
                     "threads": int(os.environ.get("MAESTRO_BENCH_THREADS", "0"))
                     or torch.get_num_threads(), "jamba_config": _jamba_hf_config(quick)},
        "machine": machine,
        "comparisons": comparisons,
        "results": results,
        "errors": errors,
    }
    if not json_output:
        _print_table(report)
    return report
