"""``maestro bench state``: what structured generation and reusable model state cost and save.

Four numbers, each against its competitor measured in the same run:

1. **Constrained decoding overhead** on SmolLM2-135M: milliseconds per generated token with the
   tool-call grammar on vs off, same prompt, same number of tokens (target <= 15 %). The prompt
   is fully cached first, so both runs time decoding only.
2. **Time to first token with a warm shared prefix**: a ~1,000-token system prompt (tool
   definitions and instructions) followed by a short user message; cold (no prefix cache) vs
   warm (another conversation with the same system prompt ran before) (target >= 10x).
3. **Resuming a long conversation from a stored state** on the 300M Jamba pattern
   (``ModelConfig.jamba_300m()``, random weights): re-prefilling history + new message vs
   loading the stored state's bytes, restoring it and prefilling only the new message
   (target >= 50x at 8,192 tokens).
4. **Stored state size** at that length for the Jamba pattern vs ``ModelConfig.llama_300m()``
   (serialised bytes; the Llama state is sized from a cache of that length, contents unused).

``--threads N`` sets torch's thread count (on a loaded shared machine 1 is often faster).
``--quick`` shrinks every length (a smoke test of the harness; the numbers mean little).
Times are medians of ``repeats`` runs on whatever else the machine is doing: compare ratios.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from typing import Any

from maestro.bench import machine_info

FULL = {"decode_tokens": 24, "prefix_tokens": 1000, "history_tokens": 8192, "new_tokens": 16,
        "repeats": 3, "jamba": "jamba_300m"}
QUICK = {"decode_tokens": 6, "prefix_tokens": 200, "history_tokens": 256, "new_tokens": 8,
         "repeats": 1, "jamba": "jamba_tiny"}
TARGETS = {"constrained_overhead": 0.15, "ttft_speedup": 10.0, "resume_speedup": 50.0}

_TOOLS = [
    {"name": "get_weather", "description": "Weather forecast for a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                    "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}},
    {"name": "add", "description": "Add two integers.",
     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"]}},
]


def _progress(message: str) -> None:
    print(f"bench state: {message}", file=sys.stderr, flush=True)


def _median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------ 1. grammar overhead


def _constrained_overhead(m: Any, plan: dict[str, Any]) -> dict[str, Any]:
    from model.grammar import GrammarProcessor
    from model.tool_calls import prepare_messages, tool_call_grammar

    messages, _ = prepare_messages([{"role": "user", "content": "What is 17 plus 25?"}], _TOOLS,
                                   native=False)
    ids = m.encode_chat(messages)
    grammar = tool_call_grammar(_TOOLS, "required")
    m.enable_prefix_cache(256 * 2**20)
    n = plan["decode_tokens"]
    m.generate(ids, max_new_tokens=1)  # caches the whole prompt: the runs below only decode
    mask_seconds: list[float] = []

    class Timed(GrammarProcessor):  # type: ignore[misc]
        def __call__(self, generated: Any, logits: Any) -> Any:
            start = time.perf_counter()
            out = super().__call__(generated, logits)
            mask_seconds.append(time.perf_counter() - start)
            return out

    def constrained() -> Any:
        proc = Timed.for_tokenizer(m.tokenizer, grammar, m.config.vocab_size)
        return m.generate(ids, logits_processor=proc, max_new_tokens=n, stop_token_ids=[])

    constrained()  # warm-up: grammar compile, tokenizer bridge
    mask_seconds.clear()
    produced = len(constrained().token_ids)
    c = _median_time(constrained, plan["repeats"])
    u = _median_time(lambda: m.generate(ids, max_new_tokens=produced, stop_token_ids=[]),
                     plan["repeats"])
    m.prefix_cache = None
    per_c, per_u = c / produced, u / produced
    return {
        "tokens": produced,
        "ms_per_token_constrained": round(per_c * 1e3, 2),
        "ms_per_token_unconstrained": round(per_u * 1e3, 2),
        "mask_ms_per_token": round(statistics.median(mask_seconds) * 1e3, 3),
        "overhead": round(per_c / per_u - 1, 4),
        "target_max": TARGETS["constrained_overhead"],
    }


# ------------------------------------------------------------------------ 2. warm-prefix TTFT


def _system_prompt(m: Any, tokens: int) -> str:
    from model.tool_calls import generic_tools_prompt

    text = generic_tools_prompt(_TOOLS) + "\nRules:\n"
    rule = 0
    while len(m.tokenizer.encode(text, add_special_tokens=False)) < tokens:
        rule += 1
        text += f"{rule}. Answer politely, cite sources and never invent a tool result.\n"
    return str(text)


def _ttft(m: Any, plan: dict[str, Any]) -> dict[str, Any]:
    system = {"role": "system", "content": _system_prompt(m, plan["prefix_tokens"])}
    questions = ["What is the weather in Oslo?", "Add 2 and 40.", "Who are you?",
                 "Weather in Lima, in celsius?", "Add 7 and 8 please."]
    m.prefix_cache = None
    cold_ids = m.encode_chat([system, {"role": "user", "content": questions[0]}])
    cold = _median_time(lambda: m.chat([system, {"role": "user", "content": questions[0]}],
                                       max_new_tokens=1), plan["repeats"])
    pc = m.enable_prefix_cache(256 * 2**20)
    m.chat([system, {"role": "user", "content": questions[1]}], max_new_tokens=1)  # fills it
    warm_times, cached = [], []
    for q in questions[2 : 2 + plan["repeats"]]:
        start = time.perf_counter()
        r = m.chat([system, {"role": "user", "content": q}], max_new_tokens=1)
        warm_times.append(time.perf_counter() - start)
        cached.append(r.usage.cached_tokens)
    m.prefix_cache = None
    warm = statistics.median(warm_times)
    return {
        "prompt_tokens": len(cold_ids),
        "cached_tokens": cached,
        "cold_s": round(cold, 4),
        "warm_s": round(warm, 4),
        "speedup": round(cold / warm, 2),
        "cache_hits": pc.stats.hits,
        "cache_bytes": pc.nbytes(),
        "target_min": TARGETS["ttft_speedup"],
    }


# ------------------------------------------------------------------------ 3./4. stored state


def random_model(config: Any, seed: int = 0) -> Any:
    """A CausalLM with seeded random weights of sane scale (benchmarks need no checkpoint)."""
    import torch

    from model.transformer import CausalLM

    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = CausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                n = p.shape[-1]
                p.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand_as(p))
            elif name.endswith(".D") or "norm" in name:
                p.fill_(1.0)
            elif name.endswith("dt_proj.bias"):
                p.uniform_(-6.0, -2.0, generator=gen)
            elif p.dim() == 1:
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def _state(plan: dict[str, Any]) -> dict[str, Any]:
    import torch

    from model.cache import HybridCache
    from model.config import ModelConfig
    from model.generate import prefill_chunk
    from model.state_io import snapshot_from_bytes, snapshot_to_bytes

    config = getattr(ModelConfig, plan["jamba"])()
    n, k = plan["history_tokens"], plan["new_tokens"]
    _progress(f"building {plan['jamba']} (random weights)")
    model = random_model(config)
    gen = torch.Generator().manual_seed(1)
    history = torch.randint(3, config.vocab_size, (1, n), generator=gen)
    new = torch.randint(3, config.vocab_size, (1, k), generator=gen)
    chunk = prefill_chunk(model.device)  # as model.generate prefills
    with torch.inference_mode():
        _progress(f"prefilling {n} tokens (the re-prefill baseline)")
        cache = model.new_cache(1, n + k)
        start = time.perf_counter()
        for s in range(0, n, chunk):
            model(history[:, s : s + chunk], cache=cache, logits_to_keep=1)
        prefill_history = time.perf_counter() - start
        snap = cache.snapshot()
        start = time.perf_counter()
        want = model(new, cache=cache)[:, -1, :]
        prefill_new = time.perf_counter() - start
        reprefill = prefill_history + prefill_new
        start = time.perf_counter()
        blob = snapshot_to_bytes(snap, plan["jamba"], history[0].tolist())
        save_s = time.perf_counter() - start

        def resume() -> Any:
            state = snapshot_from_bytes(blob, model)
            fresh = model.new_cache(1, n + k)
            fresh.restore(state.snapshot)
            return model(new, cache=fresh)[:, -1, :]

        got = resume()
        resume_s = _median_time(resume, plan["repeats"])
    err = float((got - want).abs().max())
    llama = ModelConfig.llama_300m()
    llama_cache = HybridCache(llama, 1, n)
    llama_cache._advance(None, n)  # only the size matters: mark the slots used, skip the compute
    llama_bytes = len(snapshot_to_bytes(llama_cache.snapshot(), "llama_300m", [0] * n))
    return {
        "model": plan["jamba"],
        "history_tokens": n,
        "new_tokens": k,
        "reprefill_s": round(reprefill, 3),
        "resume_s": round(resume_s, 4),
        "speedup": round(reprefill / resume_s, 1),
        "save_s": round(save_s, 4),
        "max_logit_err_vs_uninterrupted": err,
        "state_bytes_jamba": len(blob),
        "state_bytes_llama_300m": llama_bytes,
        "size_ratio_llama_over_jamba": round(llama_bytes / len(blob), 2),
        "target_min": TARGETS["resume_speedup"],
    }


# ------------------------------------------------------------------------------- entry point


def main(json_output: bool = False, quick: bool = False, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the benchmark; print a summary (or nothing with ``json_output``); return the report."""
    import importlib.metadata as md

    import torch

    from model import load

    plan = {**(QUICK if quick else FULL), **(plan or {})}
    if plan.get("threads"):  # on a shared, loaded box one thread beats two spinning ones
        torch.set_num_threads(int(plan["threads"]))
    report: dict[str, Any] = {"settings": {**plan, "threads": torch.get_num_threads(), "dtype": "float32"}}
    _progress("loading SmolLM2-135M-Instruct")
    m = load()
    _progress("constrained decoding overhead")
    report["constrained_decoding"] = _constrained_overhead(m, plan)
    _progress("time to first token, warm vs cold prefix")
    report["ttft_shared_prefix"] = _ttft(m, plan)
    del m
    report["stored_state"] = _state(plan)
    machine = machine_info()
    for package in ("torch", "llguidance", "safetensors"):
        with contextlib.suppress(md.PackageNotFoundError):
            machine[f"{package}_version"] = md.version(package)
    report["machine"] = machine
    if not json_output:
        _print(report)
    return report


def _print(report: dict[str, Any]) -> None:
    c, t, s = report["constrained_decoding"], report["ttft_shared_prefix"], report["stored_state"]
    print("maestro bench state")
    print(f"  constrained decoding: {c['ms_per_token_constrained']} vs {c['ms_per_token_unconstrained']} "
          f"ms/token ({c['overhead']:+.1%}; mask {c['mask_ms_per_token']} ms; target <= "
          f"{c['target_max']:.0%})")
    print(f"  TTFT, {t['prompt_tokens']}-token prompt: cold {t['cold_s']} s, warm {t['warm_s']} s "
          f"-> {t['speedup']}x (cached {t['cached_tokens']}; target >= {t['target_min']}x)")
    print(f"  resume {s['history_tokens']}+{s['new_tokens']} tokens on {s['model']}: re-prefill "
          f"{s['reprefill_s']} s, from stored state {s['resume_s']} s -> {s['speedup']}x "
          f"(target >= {s['target_min']}x; max logit err {s['max_logit_err_vs_uninterrupted']:.1e})")
    print(f"  stored state @{s['history_tokens']} tokens: Jamba {s['state_bytes_jamba'] / 2**20:.1f} MiB, "
          f"Llama-300M {s['state_bytes_llama_300m'] / 2**20:.1f} MiB "
          f"({s['size_ratio_llama_over_jamba']}x)")
    print(f"  settings: {json.dumps(report['settings'])}")
    print(f"  machine: {json.dumps(report['machine'])}")


if __name__ == "__main__":
    threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else None
    main(quick="--quick" in sys.argv, json_output="--json" in sys.argv,
         plan={"threads": int(threads)} if threads else None)
