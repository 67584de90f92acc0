"""Fixtures for the engine tests: tiny random checkpoints written by transformers itself.

Each fixture builds a transformers model (JambaForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM)
from a small config, perturbs every parameter away from its default init (norm weights of 1,
D of 1 and identical A rows would hide a mis-mapped tensor), saves it with ``save_pretrained``
as a real safetensors directory and hands back both the directory and the transformers model,
which is the numerical reference. Session-scoped: each checkpoint is written once per run.

The ``kernel_backend`` fixture runs the engine on the reference kernels unless
MAESTRO_TEST_KERNEL_BACKEND names another one (e.g. ``auto``), so these tests do not pay a
C++ compile and check the model, not the kernels (the kernel tests compare backends).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

JAMBA_CONFIGS: dict[str, dict[str, Any]] = {
    # (a) Jamba-v0.1's pattern scaled down: attention at layer 4 of 8, MoE on odd layers.
    "v01_pattern": dict(
        vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_period=8, attn_layer_offset=4,
        expert_layer_period=2, expert_layer_offset=1, num_experts=4, num_experts_per_tok=2,
        mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
    ),
    # (b) dense like Jamba Reasoning 3B: no MoE, two attention layers with one KV head.
    "dense_3b_like": dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=1, attn_layer_period=4, attn_layer_offset=2,
        num_experts=1, num_experts_per_tok=1, mamba_d_state=16,
    ),
    # (c) the shape of ai21labs/Jamba-tiny-random (vocab and FFN width cut to keep it quick).
    "tiny_random_shape": dict(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_period=4, attn_layer_offset=2,
        num_experts=4, num_experts_per_tok=2, mamba_dt_rank=8, mamba_d_state=16,
    ),
    # (d) awkward sizes: dt_rank 5 divides nothing, d_state 8, odd vocab, 3 heads, conv width 3,
    # biases on in/out_proj but none on the conv, 3 experts.
    "awkward": dict(
        vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=6,
        num_attention_heads=3, num_key_value_heads=1, attn_layer_period=3, attn_layer_offset=1,
        expert_layer_period=2, expert_layer_offset=0, num_experts=3, num_experts_per_tok=2,
        mamba_d_state=8, mamba_d_conv=3, mamba_dt_rank=5, mamba_proj_bias=True,
        mamba_conv_bias=False,
    ),
}

LLAMA_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(
        arch="llama", vocab_size=128, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        rope_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=512,
    ),
    "llama3_rope": dict(
        arch="llama", vocab_size=128, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=16,
        ),
        max_position_embeddings=512,
    ),
    "mistral_window": dict(
        arch="mistral", vocab_size=128, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        rope_theta=10000.0, sliding_window=8, max_position_embeddings=512,
    ),
    "qwen2": dict(
        arch="qwen2", vocab_size=131, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        rope_theta=1000000.0, tie_word_embeddings=False, max_position_embeddings=512,
    ),
}


@dataclass
class Checkpoint:
    """A tiny checkpoint on disk and the transformers model that wrote it (the reference)."""

    name: str
    path: Path
    reference: Any  # transformers PreTrainedModel, eval mode, fp32


def _perturb(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("A_log"):
                p.copy_(torch.log(1 + 15 * torch.rand(p.shape, generator=gen)))
            elif name.endswith(".D") or "norm" in name:
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("dt_proj.bias"):
                p.copy_(-2 + 0.5 * noise)
            elif p.dim() == 1 or name.endswith("embed_tokens.weight"):
                p.copy_(0.5 * noise)
            else:
                fan_in = p.shape[-1]
                p.copy_(noise / fan_in**0.5)


def _build(name: str, params: dict[str, Any], root: Path, seed: int) -> Checkpoint:
    import transformers

    params = dict(params)
    arch = params.pop("arch", "jamba")
    if arch == "jamba":
        cfg = transformers.JambaConfig(**params)
        cls = transformers.JambaForCausalLM
    elif arch == "llama":
        cfg = transformers.LlamaConfig(**params)
        cls = transformers.LlamaForCausalLM
    elif arch == "mistral":
        cfg = transformers.MistralConfig(**params)
        cls = transformers.MistralForCausalLM
    else:
        cfg = transformers.Qwen2Config(**params)
        cls = transformers.Qwen2ForCausalLM
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    _perturb(model, seed)
    path = root / name
    model.save_pretrained(path)
    return Checkpoint(name=name, path=path, reference=model)


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory):
    """``checkpoint_factory(name)`` -> Checkpoint for a name of JAMBA_CONFIGS or LLAMA_CONFIGS."""
    root = tmp_path_factory.mktemp("hf_checkpoints")
    built: dict[str, Checkpoint] = {}
    table = {**JAMBA_CONFIGS, **LLAMA_CONFIGS}

    def get(name: str) -> Checkpoint:
        if name not in built:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                # the seed follows the name, not the order tests ask in: a test's weights
                # (and the tolerances tuned on them) must not depend on which tests ran first
                built[name] = _build(name, table[name], root, seed=list(table).index(name) + 1)
            finally:
                torch.set_num_threads(threads)
        return built[name]

    return get


@pytest.fixture()
def kernel_backend() -> Iterator[str]:
    """The kernel backend for a model test, on ONE torch thread.

    One thread because these shapes are tiny: on a shared 2-core machine two OpenMP threads
    spin against each other and other processes, and measured 60x slower (0.6 s vs 0.01 s per
    decode step of the tiny_random_shape model).
    """
    from model import kernels

    backend = os.environ.get("MAESTRO_TEST_KERNEL_BACKEND", "ref")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with kernels.use(backend):
            yield backend
    finally:
        torch.set_num_threads(threads)
