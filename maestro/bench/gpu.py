"""``maestro bench gpu``: the engine on a CUDA GPU against transformers, same weights, same run.

Models, all in bf16 on the GPU:

- ``jamba-300m``: the random, seeded 300M Jamba pattern of ``maestro bench engine``, run by us and
  by transformers' ``JambaForCausalLM`` on the very same weights. Without the mamba-ssm and
  causal-conv1d wheels (none exist for recent torch), transformers runs its Mamba layers as a
  Python loop over the sequence: the hardware lottery, on a GPU.
- ``llama-300m``: transformers' same-size Llama, the transformer the hybrid has to beat.

Rows: prefill tokens/s at each prompt length (ours in the chunks ``generate`` uses); decode
tokens/s after an N-token prompt, ours with CUDA graphs (the default, :mod:`model.cuda_graph`)
and without (``model.cuda_graphs = False``: every kernel launched from Python), and
transformers with its default dynamic cache. Every engine runs every length in every repetition,
alternately; each figure is the median of ``reps``, timed between ``torch.cuda.synchronize()``
calls. transformers' Jamba skips prompts longer than ``hf_jamba_max`` (its sequential scan
takes minutes there).

Without a CUDA device it says so and measures nothing. ``--quick``: a scaled-down Jamba at tiny
lengths, a smoke test of the harness.

Measured 2026-11-23 on an H100 80GB HBM3 (torch 2.11.0+cu130, Triton 3.6.0, transformers 5.17.0;
16-core Xeon host), tokens/s, one run (this host's Python speed moved the eager rows by ~30%
between runs of the same day):

    row                         ours      baseline                     ratio
    decode after 512            516.4     transformers Jamba   32.0    16.15
    decode after 512            516.4     transformers Llama   53.0     9.74
    decode after 512            516.4     ours, no graphs      64.0     8.07
    decode after 8192           439.3     transformers Llama   50.8     8.65
    prefill 2048              64 473      transformers Jamba  980      65.8
    prefill 2048              64 473      transformers Llama 86 797     0.74
    prefill 8192             240 676      transformers Llama 309 654    0.78

Recording the graph took 18.6 ms, once per cache, inside the decode rows. That run predates
``triton_backend._call`` (Triton launched without the custom-op dispatch), which was not
measured on a GPU.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

from maestro.bench import machine_info
from maestro.bench.engine import _hf_jamba, _llama_hf_config, _timed

FULL = {"prefill": [2048, 8192], "decode_after": [512, 8192], "steps": 64, "reps": 3,
        "hf_jamba_max": 2048}
QUICK = {"prefill": [64], "decode_after": [32], "steps": 8, "reps": 1, "hf_jamba_max": 64}


def _synced(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes on the GPU too: the queue is drained before and after."""
    import torch

    def drained() -> None:
        fn()
        torch.cuda.synchronize()

    torch.cuda.synchronize()
    return _timed(drained)


class _Ours:
    def __init__(self, model: Any, graphs: bool) -> None:
        self.model, self.graphs = model, graphs
        self.record_seconds: list[float] = []  # each decode's graph recording (in its time)

    def prefill(self, ids: Any) -> None:
        from model.generate import prefill_chunk

        cache = self.model.new_cache(1, ids.shape[1])
        step = prefill_chunk(ids.device)
        for start in range(0, ids.shape[1], step):
            self.model(ids[:, start : start + step], cache=cache, logits_to_keep=1)

    def decode(self, ids: Any, steps: int) -> float:
        self.model.cuda_graphs = self.graphs
        try:
            cache = self.model.new_cache(1, ids.shape[1] + steps)
            self.model(ids, cache=cache, logits_to_keep=1)
            token = ids[:, -1:]
            seconds = _synced(lambda: [self.model(token, cache=cache) for _ in range(steps)])
            graph = cache.decode_graph
            if graph is not None:
                self.record_seconds.append(graph.record_seconds)
            return seconds
        finally:
            self.model.cuda_graphs = True


class _Transformers:
    def __init__(self, model: Any) -> None:
        self.model = model

    def prefill(self, ids: Any) -> None:
        self.model(ids, use_cache=True, logits_to_keep=1)

    def decode(self, ids: Any, steps: int) -> float:
        past = self.model(ids, use_cache=True, logits_to_keep=1).past_key_values
        token = ids[:, -1:]

        def run() -> None:
            p = past
            for _ in range(steps):
                p = self.model(token, past_key_values=p, use_cache=True, logits_to_keep=1).past_key_values

        return _synced(run)


def _engines(quick: bool) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from model.config import ModelConfig
    from model.hf import build_model

    hf_jamba, hf_cfg = _hf_jamba(quick)
    hf_jamba = hf_jamba.to(torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in hf_jamba.state_dict().items()}
    ours = build_model(ModelConfig.from_hf_config(hf_cfg), state, torch.bfloat16, "cuda").eval()
    llama_cfg = _llama_hf_config()
    if quick:
        llama_cfg.update(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    torch.manual_seed(1234)
    llama: Any = LlamaForCausalLM(LlamaConfig(**llama_cfg))
    llama = llama.to(torch.bfloat16).cuda().eval()
    return {
        "ours": _Ours(ours, graphs=True),
        "ours/no-graphs": _Ours(ours, graphs=False),
        "transformers-jamba": _Transformers(hf_jamba.cuda().eval()),
        "llama-300m": _Transformers(llama),
        "_vocab": hf_cfg["vocab_size"],
    }


def _measure(plan: dict[str, Any], quick: bool) -> dict[str, dict[str, float]]:
    """engine -> metric ("prefill@N", "decode@N") -> tokens/s (median over reps)."""
    import torch

    engines = _engines(quick)
    vocab = engines.pop("_vocab")
    gen = torch.Generator().manual_seed(7)
    lengths = sorted(set(plan["prefill"]) | set(plan["decode_after"]))
    prompts = {n: torch.randint(3, vocab, (1, n), generator=gen).cuda() for n in lengths}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in engines}
    with torch.inference_mode():
        for name, engine in engines.items():  # warm-up: Triton compiles, cuBLAS picks kernels
            n = min(lengths)
            if name != "ours/no-graphs":
                engine.prefill(prompts[n])
            engine.decode(prompts[n], 4)
        for rep in range(plan["reps"]):
            for n in lengths:
                for name, engine in engines.items():
                    if name == "transformers-jamba" and n > plan["hf_jamba_max"]:
                        continue
                    if n in plan["prefill"] and name != "ours/no-graphs":  # graphs: decode only
                        seconds = _synced(functools.partial(engine.prefill, prompts[n]))
                        times[name].setdefault(f"prefill@{n}", []).append(n / seconds)
                    if n in plan["decode_after"]:
                        seconds = engine.decode(prompts[n], plan["steps"])
                        times[name].setdefault(f"decode@{n}", []).append(plan["steps"] / seconds)
                print(f"bench gpu: repetition {rep + 1}/{plan['reps']}, {n} tokens done",
                      file=sys.stderr, flush=True)
    result = {name: {m: statistics.median(v) for m, v in metrics.items()}
              for name, metrics in times.items()}
    recorded = engines["ours"].record_seconds
    if recorded:  # one recording per new cache, inside the decode time above
        result["ours"]["graph_record_ms"] = 1000 * statistics.median(recorded)
    return result


ROWS = [  # (ours, baseline) pairs the table compares
    ("ours", "transformers-jamba"),
    ("ours", "llama-300m"),
    ("ours", "ours/no-graphs"),
]


def main(json_output: bool = False, quick: bool = False,
         plan: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        message = "no CUDA device here: nothing to measure (maestro bench engine covers the CPU)"
        if not json_output:
            print(f"maestro bench gpu: {message}")
        return {"error": message}
    plan = plan or (QUICK if quick else FULL)
    measured = _measure(plan, quick)
    comparisons = []
    for ours, base in ROWS:
        for metric, value in measured[ours].items():
            other = measured[base].get(metric)
            if other is not None and (base != "ours/no-graphs" or metric.startswith("decode")) \
                    and metric != "graph_record_ms":
                comparisons.append({"name": f"{metric} vs {base}", "unit": "tok/s", "ours": value,
                                    "baseline": other, "ratio": value / other})
    import transformers

    machine = {**machine_info(), "gpu": torch.cuda.get_device_name(),
               "cuda": torch.version.cuda, "transformers_version": transformers.__version__}
    try:
        import triton

        machine["triton_version"] = triton.__version__
    except ImportError:
        pass
    report = {"comparisons": comparisons, "measured": measured, "settings": {**plan, "quick": quick},
              "machine": machine}
    if not json_output:
        for row in comparisons:
            print(f"{row['name']:36s} ours {row['ours']:9.1f}  baseline {row['baseline']:9.1f} "
                  f" ratio {row['ratio']:6.2f}")
        if "graph_record_ms" in measured["ours"]:
            print(f"CUDA graph recording (once per cache, inside the decode rows): "
                  f"{measured['ours']['graph_record_ms']:.1f} ms")
        print(f"settings: {json.dumps(report['settings'])}")
        print(f"machine: {json.dumps(machine)}")
    return report
