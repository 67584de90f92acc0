"""Load GGUF files (llama.cpp's format): config from metadata, tensors dequantised at load.

A GGUF file holds metadata (``general.architecture``, ``<arch>.block_count``, the tokenizer...)
and tensors named in llama.cpp's scheme (``blk.3.attn_q.weight``), many of them quantised in
blocks. Loading it means three translations, each kept in one function here:

1. metadata -> a Hugging Face style ``config.json`` dict (``hf_config_from_gguf``), so one
   ``ModelConfig.from_hf_config`` covers both checkpoint formats;
2. llama.cpp tensor names and layouts -> Hugging Face names and layouts (``_llama_tensor`` and
   ``_jamba_tensor``), undoing what llama.cpp's converter did: it permutes the rows of q_proj
   and k_proj for its RoPE kernel (we permute back), stores Mamba's ``A`` as ``-exp(A_log)``,
   squeezes the depthwise conv weight and stacks MoE experts into one 3-D tensor (kept
   stacked: ``build_model`` accepts ``experts.{gate,up,down}_proj`` as (E, ...) tensors);
3. quantised blocks -> float tensors via ``gguf.quants.dequantize`` (one tensor at a time, so
   peak memory is the final weights plus one tensor).

Supported architectures: ``llama`` (Llama-family incl. SmolLM2, Mistral-style) and ``jamba``.
Supported tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.errors import CheckpointError, UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch

    from model.transformer import CausalLM

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_TENSOR_TYPES",
    "GGUFFile",
    "hf_config_from_gguf",
    "load_gguf",
    "read_metadata",
]

SUPPORTED_ARCHITECTURES = ("jamba", "llama")
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")


class GGUFFile:
    """An opened GGUF file: its metadata as plain Python values and its tensor index.

    The reader memory-maps the file, so opening is cheap in memory; tensor bytes are read only
    when ``tensor()`` dequantises them.
    """

    def __init__(self, path: str | Path) -> None:
        import gguf

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError("no such GGUF file", file=str(self.path))
        try:
            self._reader = gguf.GGUFReader(self.path, "r")
        except (ValueError, KeyError, IndexError, OSError, EOFError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"not a readable GGUF file (corrupted or truncated header: {exc})",
                file=str(self.path),
            ) from exc
        self.metadata: dict[str, Any] = {}
        for key, field in self._reader.fields.items():
            try:
                self.metadata[key] = field.contents()
            except Exception as exc:  # gguf raises assorted errors on malformed fields
                raise CheckpointError(
                    f"metadata key {key!r} cannot be decoded: {exc}", file=str(self.path)
                ) from exc
        self._tensors = {t.name: t for t in self._reader.tensors}

    def close(self) -> None:
        """Drop the tensor index and the file mapping; ``metadata`` stays usable."""
        self._tensors = {}
        self._reader = None

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise CheckpointError("metadata lacks general.architecture", file=str(self.path))
        return arch

    @property
    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def has(self, name: str) -> bool:
        return name in self._tensors

    def tensor_type(self, name: str) -> str:
        return self._get(name).tensor_type.name

    def _get(self, name: str) -> Any:
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError("tensor missing from the GGUF file", file=str(self.path), tensor=name) from None

    def tensor(self, name: str) -> np.ndarray:
        """Dequantised float32 array in numpy (row-major, HF) order: shape = reversed GGUF dims."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        info = self._get(name)
        qtype = info.tensor_type
        if qtype.name not in SUPPORTED_TENSOR_TYPES:
            raise CheckpointError(
                f"tensor type {qtype.name} is not supported (supported: "
                f"{', '.join(SUPPORTED_TENSOR_TYPES)})",
                file=str(self.path),
                tensor=name,
            )
        shape = tuple(int(d) for d in reversed(info.shape.tolist()))
        try:
            if qtype == GGMLQuantizationType.F32:
                array = np.asarray(info.data, dtype=np.float32)
            else:
                array = dequantize(info.data, qtype)
            return array.reshape(shape)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(
                f"cannot dequantise {qtype.name} data to shape {shape}: {exc}",
                file=str(self.path),
                tensor=name,
            ) from exc


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a GGUF file as plain Python values (strings, numbers, lists)."""
    return GGUFFile(path).metadata


# ------------------------------------------------------------------------------------ config


def _layer_pattern(flags: list[bool], what: str, where: str) -> tuple[int, int]:
    """(period, offset) such that ``flags[i] == (i % period == offset)``; error if irregular."""
    hits = [i for i, flag in enumerate(flags) if flag]
    if not hits:
        return len(flags) + 1, len(flags)  # never (offset beyond the last layer)
    offset = hits[0]
    period = hits[1] - hits[0] if len(hits) > 1 else len(flags)
    period = max(period, offset + 1)
    if [i % period == offset for i in range(len(flags))] != flags:
        raise UnsupportedArchitectureError(
            "jamba", SUPPORTED_ARCHITECTURES, f"{where}: {what} layers {hits} are not periodic"
        )
    return period, offset


def hf_config_from_gguf(gf: GGUFFile) -> dict[str, Any]:
    """A Hugging Face style config dict for the model this GGUF file describes."""
    arch = gf.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(arch, SUPPORTED_ARCHITECTURES, f"GGUF file {gf.path}")
    meta = gf.metadata

    def get(key: str, default: Any = None, *, required: bool = False) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            if required:
                raise CheckpointError(f"metadata lacks {full}", file=str(gf.path))
            return default
        return meta[full]

    hidden = int(get("embedding_length", required=True))
    heads = int(get("attention.head_count", required=True))
    n_layers = int(get("block_count", required=True))
    kv_raw = get("attention.head_count_kv", heads)
    kv_per_layer = [int(x) for x in kv_raw] if isinstance(kv_raw, list) else [int(kv_raw)] * n_layers
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = int(get("vocab_size", len(tokens) if tokens else 0))
    if vocab <= 0:
        vocab = int(gf._get("token_embd.weight").shape[-1])
    config: dict[str, Any] = {
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length", required=True)),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(kv_per_layer) or heads,
        "max_position_embeddings": int(get("context_length", 4096)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "tie_word_embeddings": not gf.has("output.weight"),
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
    }
    key_length = get("attention.key_length")
    if key_length is not None:
        config["head_dim"] = int(key_length)
    if arch == "llama":
        config["rope_theta"] = float(get("rope.freq_base", 10000.0))
        scaling = get("rope.scaling.type")
        if scaling not in (None, "none"):
            if scaling != "linear":
                raise UnsupportedArchitectureError(
                    f"llama with rope scaling {scaling!r}", ("none", "linear"), f"GGUF file {gf.path}"
                )
            config["rope_scaling"] = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
        if gf.has("rope_freqs.weight"):
            # Llama 3.1-style frequency factors: the GGUF stores the resulting table, not the
            # parameters ModelConfig's "llama3" RoPE needs; refusing beats silently wrong logits.
            raise UnsupportedArchitectureError(
                "llama with rope_freqs.weight (Llama 3.1 RoPE scaling)", SUPPORTED_ARCHITECTURES,
                f"GGUF file {gf.path}; load the Hugging Face checkpoint instead",
            )
        config["attention_bias"] = gf.has("blk.0.attn_q.bias")
        n_experts = int(get("expert_count", 0) or 0)
        if n_experts > 1:
            raise UnsupportedArchitectureError(
                "llama with MoE (mixtral)", SUPPORTED_ARCHITECTURES, f"GGUF file {gf.path}"
            )
        return config
    # jamba: a layer is attention iff it has KV heads; MoE iff it has a router.
    attn_period, attn_offset = _layer_pattern([kv > 0 for kv in kv_per_layer], "attention", str(gf.path))
    n_experts = int(get("expert_count", 1) or 1)
    moe_flags = [gf.has(f"blk.{i}.ffn_gate_inp.weight") for i in range(n_layers)]
    expert_period, expert_offset = (
        _layer_pattern(moe_flags, "MoE", str(gf.path)) if n_experts > 1 else (1, 0)
    )
    inner = int(get("ssm.inner_size", 2 * hidden))
    if inner % hidden:
        raise UnsupportedArchitectureError(
            "jamba", SUPPORTED_ARCHITECTURES, f"ssm.inner_size {inner} is not a multiple of {hidden}"
        )
    config.update(
        {
            "attn_layer_period": attn_period,
            "attn_layer_offset": attn_offset,
            "expert_layer_period": expert_period,
            "expert_layer_offset": expert_offset,
            "num_experts": n_experts,
            "num_experts_per_tok": int(get("expert_used_count", 1) or 1),
            "mamba_d_state": int(get("ssm.state_size", 16)),
            "mamba_d_conv": int(get("ssm.conv_kernel", 4)),
            "mamba_expand": inner // hidden,
            "mamba_dt_rank": int(get("ssm.time_step_rank", math.ceil(hidden / 16))),
            "mamba_conv_bias": any(gf.has(f"blk.{i}.ssm_conv1d.bias") for i in range(n_layers)),
            "mamba_proj_bias": any(gf.has(f"blk.{i}.ssm_in.bias") for i in range(n_layers)),
            "use_mamba_kernels": False,
        }
    )
    if not any(kv_per_layer):
        config["num_key_value_heads"] = int(get("attention.head_count_kv_max", heads)) or heads
    return config


# ------------------------------------------------------------------------------------ tensors

_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output.weight": "lm_head.weight",
}
_LLAMA_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_JAMBA_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "pre_ff_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ssm_in.weight": "mamba.in_proj.weight",
    "ssm_in.bias": "mamba.in_proj.bias",
    "ssm_conv1d.weight": "mamba.conv1d.weight",
    "ssm_conv1d.bias": "mamba.conv1d.bias",
    "ssm_x.weight": "mamba.x_proj.weight",
    "ssm_dt.weight": "mamba.dt_proj.weight",
    "ssm_dt.bias": "mamba.dt_proj.bias",
    "ssm_a": "mamba.A_log",
    "ssm_d": "mamba.D",
    "ssm_out.weight": "mamba.out_proj.weight",
    "ssm_out.bias": "mamba.out_proj.bias",
    "ssm_dt_norm.weight": "mamba.dt_layernorm.weight",
    "ssm_b_norm.weight": "mamba.b_layernorm.weight",
    "ssm_c_norm.weight": "mamba.c_layernorm.weight",
    "ffn_gate_inp.weight": "feed_forward.router.weight",
    "ffn_gate.weight": "feed_forward.gate_proj.weight",
    "ffn_up.weight": "feed_forward.up_proj.weight",
    "ffn_down.weight": "feed_forward.down_proj.weight",
}
_STACKED_EXPERTS = {
    "ffn_gate_exps.weight": "gate_proj",
    "ffn_up_exps.weight": "up_proj",
    "ffn_down_exps.weight": "down_proj",
}
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")


def _unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (its RoPE pairs adjacent dims; HF pairs halves).

    The converter reshaped rows as [n_head, 2, hd/2] and swapped the last two axes; the
    inverse views them as [n_head, hd/2, 2] and swaps back.
    """
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_tensors(gf: GGUFFile, config: Mapping[str, Any]) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
    """(HF name, loader) for every tensor in the file; loaders dequantise on call."""
    arch = config["model_type"]
    block_map = _LLAMA_BLOCK if arch == "llama" else _JAMBA_BLOCK
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for name in gf.tensor_names:
        if name in _TOP_LEVEL:
            yield _TOP_LEVEL[name], (lambda n=name: gf.tensor(n))
            continue
        if name == "output_norm.weight":
            hf = "model.norm.weight" if arch == "llama" else "model.final_layernorm.weight"
            yield hf, (lambda n=name: gf.tensor(n))
            continue
        match = _BLOCK_NAME.match(name)
        if match is None:
            raise CheckpointError("unexpected tensor (no Hugging Face equivalent)", file=str(gf.path), tensor=name)
        layer, local = match.group(1), match.group(2)
        prefix = f"model.layers.{layer}."
        if local in _STACKED_EXPERTS and arch == "jamba":
            # llama.cpp stacks the experts (E, I, D) / (E, D, I): build_model takes them as is.
            yield f"{prefix}feed_forward.experts.{_STACKED_EXPERTS[local]}", (lambda n=name: gf.tensor(n))
            continue
        if local not in block_map:
            raise CheckpointError(
                f"unexpected tensor for architecture {arch!r}", file=str(gf.path), tensor=name
            )
        hf_name = prefix + block_map[local]
        if arch == "llama" and local in ("attn_q.weight", "attn_q.bias"):
            yield hf_name, (lambda n=name: _unpermute_rope_rows(gf.tensor(n), heads))
        elif arch == "llama" and local in ("attn_k.weight", "attn_k.bias"):
            yield hf_name, (lambda n=name: _unpermute_rope_rows(gf.tensor(n), kv_heads))
        elif local == "ssm_a":
            # stored as A = -exp(A_log); HF keeps A_log.
            yield hf_name, (lambda n=name: np.log(-gf.tensor(n)))
        elif local == "ssm_conv1d.weight":
            yield hf_name, (lambda n=name: gf.tensor(n)[:, None, :])  # [ED, K] -> [ED, 1, K]
        elif local == "ssm_d" or local == "ssm_dt.bias":
            yield hf_name, (lambda n=name: gf.tensor(n).reshape(-1))
        else:
            yield hf_name, (lambda n=name: gf.tensor(n))


class _LazyTensors(Mapping[str, "torch.Tensor"]):
    """HF-named tensors that are dequantised when looked up, and not kept.

    ``build_model`` copies each tensor into its parameter, so handing it a lazy mapping keeps
    peak memory near the final weights plus one tensor instead of twice the weights.
    """

    def __init__(self, loaders: dict[str, Callable[[], np.ndarray]], dtype: torch.dtype) -> None:
        self._loaders = loaders
        self._dtype = dtype

    def __getitem__(self, key: str) -> torch.Tensor:
        import torch

        array = self._loaders[key]()
        # F32 tensors come back as read-only views of the file's mmap: copy those, so the
        # parameters own writable memory and the file can be closed after loading.
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not array.flags.writeable:
            array = array.copy()
        tensor = torch.from_numpy(array)
        return tensor if self._dtype == torch.float32 else tensor.to(self._dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


def gguf_tensors(gf: GGUFFile, config: Mapping[str, Any], dtype: torch.dtype) -> Mapping[str, torch.Tensor]:
    """All tensors of ``gf`` under Hugging Face names, dequantised on access."""
    return _LazyTensors(dict(_hf_tensors(gf, config)), dtype)


def load_gguf(
    path: str | Path,
    dtype: torch.dtype | str = "float32",
    device: torch.device | str = "cpu",
) -> tuple[CausalLM, GGUFFile]:
    """Build the model a GGUF file describes; returns it with the opened file (for metadata)."""
    import torch

    from model.config import ModelConfig
    from model.hf import build_model

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    gf = GGUFFile(path)
    hf_config = hf_config_from_gguf(gf)
    config = ModelConfig.from_hf_config(hf_config)
    tensors = gguf_tensors(gf, hf_config, torch_dtype)
    model = build_model(config, tensors, torch_dtype, device, source=str(gf.path))
    gf.close()  # every tensor is dequantised into the model: release the file mapping
    return model, gf
