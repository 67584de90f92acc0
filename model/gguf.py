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

import contextlib
import math
import mmap
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.errors import CheckpointError, UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch
    from gguf import GGMLQuantizationType

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


# ------------------------------------------------------------------------------------ container
#
# The GGUF container, little-endian throughout (gguf-py's GGUFReader reads the same, but builds
# a numpy view per array element: ~100k views for a tokenizer, seconds per load):
#
#   magic "GGUF" | version u32 (2 or 3) | tensor count u64 | KV count u64
#   KV * (key: string, value type: u32, value)
#   tensor info * (name: string, n_dims u32, dims u64 * n_dims, type u32, offset u64)
#   padding to general.alignment (default 32) | tensor data (offsets relative to here)
#
# string = length u64 + UTF-8 bytes; array = element type u32 + count u64 + elements.
# Metadata values come out as gguf-py's ``ReaderField.contents()`` gives them (arrays of
# arrays flattened, as it does), plus its GGUF.version / tensor_count / kv_count entries.

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_STRING, _ARRAY = 8, 9
_SCALARS = {  # value type -> struct code
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class _Malformed(Exception):
    """Raised inside the parser; GGUFFile turns it into a CheckpointError naming the file."""

    def __init__(self, message: str, tensor: str | None = None) -> None:
        super().__init__(message)
        self.tensor = tensor


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    offset: int  # absolute byte offset in the file
    n_bytes: int


class _HeaderParser:
    """Reads the header from a buffer, checking every read against the buffer's end."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.end = len(buf)
        self.pos = 0

    def take(self, n: int, what: str) -> int:
        start = self.pos
        if n < 0 or start + n > self.end:
            raise _Malformed(
                f"truncated header: {what} at byte {start} needs {n} bytes, the file has {self.end}"
            )
        self.pos = start + n
        return start

    def u32(self, what: str) -> int:
        value: int = _U32.unpack_from(self.buf, self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = _U64.unpack_from(self.buf, self.take(8, what))[0]
        return value

    def string(self, what: str) -> str:
        n = self.u64(what)
        start = self.take(n, what)
        try:
            return str(self.buf[start : start + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise _Malformed(f"{what} at byte {start} is not valid UTF-8 ({exc.reason})") from None

    def value(self, vtype: int, what: str) -> Any:
        code = _SCALARS.get(vtype)
        if code is not None:
            size = struct.calcsize("<" + code)
            return struct.unpack_from("<" + code, self.buf, self.take(size, what))[0]
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            return self.array(what)
        raise _Malformed(f"{what} has unknown value type {vtype}")

    def array(self, what: str) -> list[Any]:
        etype = self.u32(what)
        count = self.u64(what)
        code = _SCALARS.get(etype)
        if code is not None:
            fmt = f"<{count}{code}"
            size = count * struct.calcsize("<" + code)
            return list(struct.unpack_from(fmt, self.buf, self.take(size, what)))
        if etype == _STRING:
            return self._strings(count, what)
        if etype == _ARRAY:  # flattened, as gguf-py's ReaderField.contents() gives them
            return [x for _ in range(count) for x in self.array(what)]
        raise _Malformed(f"{what} is an array of unknown value type {etype}")

    def _strings(self, count: int, what: str) -> list[str]:
        # The hot loop (~100k tokenizer strings): locals only, one bounds check per string.
        buf, end, pos = self.buf, self.end, self.pos
        if 8 * count > end - pos:  # every string has at least its length field
            raise _Malformed(f"truncated header: {what} ({count} strings) runs past the end of the file")
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        try:
            for _ in range(count):
                if pos + 8 > end:
                    break
                start = pos + 8
                pos = start + unpack(buf, pos)[0]
                if pos > end:
                    break
                append(str(buf[start:pos], "utf-8"))
            else:
                self.pos = pos
                return out
        except UnicodeDecodeError as exc:
            raise _Malformed(f"{what}: string #{len(out)} is not valid UTF-8 ({exc.reason})") from None
        raise _Malformed(f"truncated header: {what} runs past the end of the file ({end} bytes)")


def _parse_gguf(buf: mmap.mmap) -> tuple[dict[str, Any], list[_TensorInfo]]:
    """(metadata, tensor infos) of the GGUF file in ``buf``; raises _Malformed."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    p = _HeaderParser(buf)
    p.take(4, "the magic number")
    magic = buf[:4]
    if magic != _MAGIC:
        raise _Malformed(f"not a GGUF file (starts with {magic!r}, expected {_MAGIC!r})")
    version = p.u32("the version")
    if version not in _VERSIONS:
        hint = "; big-endian GGUF files are not supported" if version & 0xFFFF == 0 else ""
        raise _Malformed(f"GGUF version {version} is not supported (supported: 2, 3){hint}")
    n_tensors = p.u64("the tensor count")
    n_kv = p.u64("the metadata count")
    metadata: dict[str, Any] = {
        "GGUF.version": version, "GGUF.tensor_count": n_tensors, "GGUF.kv_count": n_kv,
    }
    for i in range(n_kv):
        key = p.string(f"metadata key #{i}")
        if key in metadata:
            raise _Malformed(f"metadata key {key!r} appears twice")
        metadata[key] = p.value(p.u32(f"the type of {key!r}"), f"the value of {key!r}")

    raw_infos = []
    for i in range(n_tensors):
        name = p.string(f"the name of tensor #{i}")
        n_dims = p.u32(f"the rank of tensor {name!r}")
        dims_at = p.take(8 * n_dims, f"the shape of tensor {name!r}")
        dims = struct.unpack_from(f"<{n_dims}Q", buf, dims_at)
        raw_type = p.u32(f"the type of tensor {name!r}")
        offset = p.u64(f"the data offset of tensor {name!r}")
        raw_infos.append((name, tuple(int(d) for d in dims), raw_type, offset))

    alignment = metadata.get("general.alignment", 32)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise _Malformed(f"general.alignment {alignment!r} is not a power of two")
    data_start = -(-p.pos // alignment) * alignment

    tensors: list[_TensorInfo] = []
    seen: set[str] = set()
    for name, dims, raw_type, offset in raw_infos:
        if name in seen:
            raise _Malformed("tensor appears twice", name)
        seen.add(name)
        try:
            qtype = GGMLQuantizationType(raw_type)
            block_size, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _Malformed(f"unknown tensor type code {raw_type}", name) from None
        if dims and dims[0] % block_size:
            raise _Malformed(
                f"row length {dims[0]} is not a multiple of the {qtype.name} block size {block_size}",
                name,
            )
        n_bytes = math.prod(dims) * type_size // block_size
        start = data_start + offset
        if start + n_bytes > len(buf):
            raise _Malformed(
                f"tensor data ({qtype.name}, {n_bytes} bytes at byte {start}) runs past the end "
                f"of the file ({len(buf)} bytes): the file is truncated (download it again)",
                name,
            )
        tensors.append(_TensorInfo(name, qtype, dims, start, n_bytes))
    return metadata, tensors


class GGUFFile:
    """An opened GGUF file: its metadata as plain Python values and its tensor index.

    The file is memory-mapped, so opening is cheap in memory; tensor bytes are read only when
    ``tensor()`` dequantises them.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError("no such GGUF file", file=str(self.path))
        if self.path.stat().st_size == 0:
            raise CheckpointError("the file is empty, not a GGUF file", file=str(self.path))
        try:
            with self.path.open("rb") as f:
                self._mmap: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot map the file: {exc}", file=str(self.path)) from exc
        try:
            self.metadata, infos = _parse_gguf(self._mmap)
        except _Malformed as exc:
            self.close()
            raise CheckpointError(str(exc), file=str(self.path), tensor=exc.tensor) from None
        except (struct.error, OverflowError, MemoryError, RecursionError) as exc:
            self.close()
            raise CheckpointError(
                f"not a readable GGUF file (corrupted header: {exc})", file=str(self.path)
            ) from exc
        self._tensors = {t.name: t for t in infos}

    def close(self) -> None:
        """Drop the tensor index and the file mapping; ``metadata`` stays usable."""
        self._tensors = {}
        if self._mmap is not None:
            # BufferError: an F32 tensor view is still alive; it keeps the mapping until freed.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None

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

    def _get(self, name: str) -> _TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError("tensor missing from the GGUF file", file=str(self.path), tensor=name) from None

    def tensor(self, name: str) -> np.ndarray:
        """Dequantised float32 array in numpy (row-major, HF) order: shape = reversed GGUF dims."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize, quant_shape_to_byte_shape

        info = self._get(name)
        qtype = info.tensor_type
        assert self._mmap is not None  # close() empties _tensors, so _get raised already
        if qtype.name not in SUPPORTED_TENSOR_TYPES:
            raise CheckpointError(
                f"tensor type {qtype.name} is not supported (supported: "
                f"{', '.join(SUPPORTED_TENSOR_TYPES)})",
                file=str(self.path),
                tensor=name,
            )
        shape = tuple(reversed(info.shape))
        try:
            # Handed to dequantize as gguf-py's reader would: floats by element, quantised
            # types as (rows, bytes per row), which it dequantises a few rows at a time.
            if qtype == GGMLQuantizationType.F32:
                return np.frombuffer(self._mmap, "<f4", math.prod(shape), info.offset).reshape(shape)
            if qtype == GGMLQuantizationType.F16:
                data = np.frombuffer(self._mmap, "<f2", math.prod(shape), info.offset).reshape(shape)
            else:
                data = np.frombuffer(self._mmap, np.uint8, info.n_bytes, info.offset)
                data = data.reshape(quant_shape_to_byte_shape(shape, qtype))
            return dequantize(data, qtype).reshape(shape)
        except (ValueError, TypeError, IndexError) as exc:
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
    quantize: str = "none",
) -> tuple[CausalLM, GGUFFile]:
    """Build the model a GGUF file describes; returns it with the opened file (for metadata).
    ``quantize`` re-quantises its projections as they are dequantised (``build_model``)."""
    import torch

    from model.config import ModelConfig
    from model.hf import build_model

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    gf = GGUFFile(path)
    hf_config = hf_config_from_gguf(gf)
    config = ModelConfig.from_hf_config(hf_config)
    tensors = gguf_tensors(gf, hf_config, torch_dtype)
    model = build_model(config, tensors, torch_dtype, device, source=str(gf.path), quantize=quantize)
    gf.close()  # every tensor is dequantised into the model: release the file mapping
    return model, gf
