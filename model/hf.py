"""Hugging Face checkpoints: the directory loader and the single place that maps weight names.

``build_model(config, tensors, dtype, device)`` takes tensors in **transformers naming**
(``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight``,
``model.layers.{i}.mamba.in_proj.weight``, ``model.layers.{i}.feed_forward.experts.{j}.gate_proj
.weight``, ``model.final_layernorm.weight`` / ``model.norm.weight``, ``lm_head.weight``, ...)
and returns a ready ``CausalLM``. Every other loader (GGUF included) converts its tensors to
this naming and calls it. Accepted spellings, per layer ``i``:

    input_layernorm                         -> mixer_norm
    pre_ff_layernorm | post_attention_layernorm -> ffn_norm
    self_attn.{q,k,v,o}_proj.{weight,bias}  -> Attention
    mamba.{in_proj,x_proj,dt_proj,out_proj,A_log,D,dt/b/c_layernorm,conv1d}  -> MambaMixer
        (conv1d.weight may be (ED, 1, K) or (ED, K); A_log, not A = -exp(A_log))
    {feed_forward|mlp}.{gate,up,down}_proj  -> dense MLP (also ``experts.0.*`` of old
        checkpoints that stored a dense FFN as a one-expert MoE)
    {feed_forward|moe}.router.weight and .experts.{j}.{gate,up,down}_proj.weight -> MoE,
        stacked into (E, I, D) / (E, D, I); transformers 5's fused ``experts.gate_up_proj``
        (E, 2I, D) and ``experts.down_proj`` (E, D, I) are accepted too, and so are stacked
        ``experts.gate_proj`` / ``experts.up_proj`` (E, I, D), the layout GGUF files use.

``load_hf_dir(path, dtype, device)`` reads config.json and ``model.safetensors`` or the shards
listed in ``model.safetensors.index.json``. The module is built on the meta device and each
parameter is then pointed at its tensor, which comes straight from an mmap of the file (our own
safetensors header parser: it also tells a truncated file apart, naming file and tensor). When
the file's dtype is the requested one, the weights are never copied; otherwise each tensor is
converted once. Peak RSS therefore stays near the final weight bytes, well under 2x.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from model.config import ModelConfig
from model.errors import CheckpointError
from model.quant import LoadQuantizer
from model.transformer import CausalLM

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_ATTN = re.compile(r"^self_attn\.([qkvo])_proj\.(weight|bias)$")
_MAMBA = re.compile(
    r"^mamba\.(in_proj\.weight|in_proj\.bias|x_proj\.weight|dt_proj\.weight|dt_proj\.bias|"
    r"out_proj\.weight|out_proj\.bias|A_log|D|dt_layernorm\.weight|b_layernorm\.weight|"
    r"c_layernorm\.weight|conv1d\.weight|conv1d\.bias)$"
)
_DENSE = re.compile(r"^(?:feed_forward|mlp)\.(gate|up|down)_proj\.(weight|bias)$")
_EXPERT = re.compile(r"^(?:feed_forward|moe|mlp)\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
_FUSED = re.compile(r"^(?:feed_forward|moe|mlp)\.experts\.(gate_up_proj|gate_proj|up_proj|down_proj)$")
_ROUTER = re.compile(r"^(?:feed_forward|moe|mlp)\.router\.weight$")


def _target(config: ModelConfig, name: str) -> tuple[str, int | None] | None:
    """Our parameter name for an HF tensor name, plus the expert index when it fills one slice.

    Fused gate_up_proj maps to the pseudo-name ``...ffn.gate_up_proj``. None = unknown name.
    """
    top = {
        "model.embed_tokens.weight": "embed_tokens.weight",
        "model.final_layernorm.weight": "norm.weight",
        "model.norm.weight": "norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    if name in top:
        return top[name], None
    m = _LAYER.match(name)
    if m is None or int(m.group(1)) >= config.num_layers:
        return None
    i, rest = int(m.group(1)), m.group(2)
    spec = config.layers[i]
    p = f"layers.{i}."
    if rest == "input_layernorm.weight":
        return p + "mixer_norm.weight", None
    if rest in ("pre_ff_layernorm.weight", "post_attention_layernorm.weight"):
        return p + "ffn_norm.weight", None
    if (m := _ATTN.match(rest)) and spec.mixer == "attention":
        return f"{p}mixer.{m.group(1)}_proj.{m.group(2)}", None
    if (m := _MAMBA.match(rest)) and spec.mixer == "mamba":
        leaf = {"conv1d.weight": "conv_weight", "conv1d.bias": "conv_bias"}.get(m.group(1), m.group(1))
        return f"{p}mixer.{leaf}", None
    if (m := _DENSE.match(rest)) and spec.ffn == "mlp":
        return f"{p}ffn.{m.group(1)}_proj.{m.group(2)}", None
    if m := _EXPERT.match(rest):
        j, which = int(m.group(1)), m.group(2)
        if spec.ffn == "mlp" and j == 0:
            return f"{p}ffn.{which}_proj.weight", None
        if spec.ffn == "moe" and j < config.num_experts:
            return f"{p}ffn.{which}_proj", j
        return None
    if (m := _FUSED.match(rest)) and spec.ffn == "moe":
        return f"{p}ffn.{m.group(1)}", None
    if _ROUTER.match(rest) and spec.ffn == "moe":
        return p + "ffn.router.weight", None
    return None


def _hf_name(config: ModelConfig, ours: str) -> str:
    """The canonical transformers name of one of our parameters (for error messages)."""
    jamba = config.model_type == "jamba"
    if not ours.startswith("layers."):
        return {
            "embed_tokens.weight": "model.embed_tokens.weight",
            "norm.weight": "model.final_layernorm.weight" if jamba else "model.norm.weight",
        }.get(ours, ours)
    _, i, part, rest = ours.split(".", 3)
    spec = config.layers[int(i)]
    p = f"model.layers.{i}."
    if part == "mixer_norm":
        return p + "input_layernorm.weight"
    if part == "ffn_norm":
        return p + ("pre_ff_layernorm.weight" if jamba else "post_attention_layernorm.weight")
    if part == "mixer" and spec.mixer == "attention":
        return p + "self_attn." + rest
    if part == "mixer":
        return p + "mamba." + {"conv_weight": "conv1d.weight", "conv_bias": "conv1d.bias"}.get(rest, rest)
    ffn = "feed_forward." if jamba else "mlp."
    if spec.ffn == "moe" and rest != "router.weight":
        return p + ffn + "experts.{j}." + rest + ".weight"
    return p + ffn + rest


def _set_param(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, leaf, nn.Parameter(value, requires_grad=False))


def build_model(
    config: ModelConfig,
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    source: str | Mapping[str, str] | None = None,
    quantize: str = "none",
) -> CausalLM:
    """Build a CausalLM from transformers-named tensors (see the module docstring).

    ``source`` names where the tensors came from (one file, or tensor name -> file) so a
    ``CheckpointError`` can say which file holds a bad tensor. Tensors are consumed one by one,
    so an iterator of lazily read tensors keeps memory at one converted tensor at a time.
    ``quantize`` (a ``model.quant.MODES`` name) quantises each projection as soon as its
    tensors are in, so the float model is never whole in memory.
    """
    def where(name: str) -> str | None:
        return source.get(name) if isinstance(source, Mapping) else source

    with torch.device("meta"):
        model = CausalLM(config)
    quantizer = LoadQuantizer(model, quantize)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    stacked: dict[str, torch.Tensor] = {}  # MoE expert stacks being filled
    filled: dict[str, set[int]] = {}
    done: set[str] = set()
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, tensor in items:
        if _IGNORED.search(name) or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        target = _target(config, name)
        if target is None:
            raise CheckpointError(
                f"unexpected tensor for this {config.model_type} config "
                f"({config.num_layers} layers, layer kinds {[s.mixer + '/' + s.ffn for s in config.layers]})",
                file=where(name), tensor=name,
            )
        ours, expert = target
        if ours.endswith("gate_up_proj"):  # fused (E, 2I, D): split into gate and up
            base = ours.removesuffix("gate_up_proj")
            e, i2, d = shapes[base + "gate_proj"]
            if tuple(tensor.shape) != (e, 2 * i2, d):
                raise CheckpointError(
                    f"shape {tuple(tensor.shape)} does not match the expected {(e, 2 * i2, d)}",
                    file=where(name), tensor=name,
                )
            gate, up = tensor.split(i2, dim=1)
            for leaf, part in (("gate_proj", gate), ("up_proj", up)):
                if base + leaf in done:
                    raise CheckpointError("tensor given twice", file=where(name), tensor=name)
                _set_param(model, base + leaf, part.to(device=device, dtype=dtype).contiguous())
                done.add(base + leaf)
                quantizer.filled(base + leaf)
            continue
        full = shapes[ours]
        want = tuple(full[1:]) if expert is not None else tuple(full)
        got = tuple(tensor.shape)
        if ours.endswith("conv_weight") and len(got) == 3 and got[1] == 1:
            tensor, got = tensor[:, 0], (got[0], got[2])  # HF Conv1d (ED, 1, K) -> (ED, K)
        if got != want:
            raise CheckpointError(
                f"shape {got} does not match the expected {want} from config.json",
                file=where(name), tensor=name,
            )
        if ours in done or (expert is None and ours in filled):
            both = (expert is None) == (ours in filled)  # per-expert and stacked tensors
            detail = "experts given both stacked and one by one" if both else "tensor given twice"
            raise CheckpointError(detail, file=where(name), tensor=name)
        if expert is None:
            _set_param(model, ours, tensor.to(device=device, dtype=dtype))
            done.add(ours)
            quantizer.filled(ours)
            continue
        if ours not in stacked:
            stacked[ours] = torch.empty(tuple(full), dtype=dtype, device=device)
            filled[ours] = set()
        stacked[ours][expert].copy_(tensor)
        filled[ours].add(expert)
        if len(filled[ours]) == full[0]:  # complete: in place (and quantised) now
            _set_param(model, ours, stacked.pop(ours))
            done.add(ours)
            quantizer.filled(ours)
    for ours in stacked:  # stacks still missing experts
        missing = sorted(set(range(config.num_experts)) - filled[ours])
        raise CheckpointError(
            f"experts {missing} missing",
            file=source if isinstance(source, str) else None,
            tensor=_hf_name(config, ours).replace("{j}", str(missing[0])),
        )
    if config.tie_word_embeddings:
        done.add("lm_head.weight")
    missing = [n for n in shapes if n not in done]
    if missing:
        names = [_hf_name(config, n).replace("{j}", "0") for n in missing]
        raise CheckpointError(
            f"{len(missing)} tensor(s) missing from the checkpoint"
            + (f" (also {', '.join(names[1:4])}{', ...' if len(names) > 4 else ''})" if len(names) > 1 else ""),
            file=source if isinstance(source, str) else None, tensor=names[0],
        )
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    quantizer.finish()
    return model.eval()


# ---------------------------------------------------------------------- safetensors, mmap'd
def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file as zero-copy views of a private (copy-on-write) mmap."""
    return dict(iter_safetensors(path))


def iter_safetensors(
    path: str | os.PathLike[str], release_pages: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` views of a private mmap of a .safetensors file.

    The header and every tensor's byte range are validated against the file size before the
    first tensor is yielded, so a truncated download fails with the file and the first tensor
    that does not fit, and nothing has been built from it. With ``release_pages`` each tensor's
    whole pages are dropped from this process (MADV_DONTNEED) once the consumer asks for the
    next one: the consumer has converted or copied it by then, or still aliases it, in which
    case the clean file pages simply fault in again on use. This keeps converting loads (e.g. an
    fp32 file into bf16, or experts stacked into one tensor) from holding file and copy at once.
    """
    path = str(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - the mmap outlives the with-block below
    except FileNotFoundError as exc:
        raise CheckpointError("file not found", file=path) from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise CheckpointError(f"truncated safetensors file ({size} bytes, no header)", file=path)
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            raise CheckpointError(
                f"truncated safetensors file: header of {header_len} bytes but the file has {size}",
                file=path,
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"corrupt safetensors header: {exc}", file=path) from exc
        base = 8 + header_len
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > base else None
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"unsupported dtype {info.get('dtype')!r}", file=path, tensor=name)
        shape = tuple(info["shape"])
        start, end = info["data_offsets"]
        numel = math.prod(shape)
        if end - start != numel * torch.empty((), dtype=dtype).element_size():
            raise CheckpointError(
                f"byte range {start}..{end} does not hold shape {shape} of {info['dtype']}",
                file=path, tensor=name,
            )
        if base + end > size:
            raise CheckpointError(
                f"truncated safetensors file: tensor data ends at byte {base + end} "
                f"but the file has {size} bytes",
                file=path, tensor=name,
            )
        entries.append((name, dtype, shape, numel, base + start, base + end))
    page = mmap.PAGESIZE
    for name, dtype, shape, numel, lo, hi in entries:
        if numel == 0 or mm is None:
            yield name, torch.empty(shape, dtype=dtype)
            continue
        yield name, torch.frombuffer(mm, dtype=dtype, count=numel, offset=lo).view(shape)
        first, last = -(-lo // page) * page, hi // page * page  # whole pages inside the tensor
        if release_pages and last > first:
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)


def _weight_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (KeyError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"corrupt shard index: {exc}", file=str(index)) from exc
        shards: dict[str, str] = {}
        for tensor, shard in weight_map.items():
            shards.setdefault(shard, tensor)
        for shard, tensor in shards.items():
            if not (root / shard).exists():
                raise CheckpointError(
                    f"shard listed in {index.name} is missing", file=str(root / shard), tensor=tensor
                )
        return [root / s for s in shards]
    single = root / "model.safetensors"
    if single.exists():
        return [single]
    hint = " (pytorch_model.bin checkpoints are not supported: convert to safetensors)" if (
        root / "pytorch_model.bin"
    ).exists() else ""
    raise CheckpointError(
        f"no model.safetensors or model.safetensors.index.json{hint}", file=str(single)
    )


def read_hf_config(path: str | os.PathLike[str]) -> ModelConfig:
    """ModelConfig from ``<path>/config.json`` (typed errors for a missing or broken file)."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError("config.json not found: not a Hugging Face model directory",
                              file=str(cfg_path))
    try:
        raw = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"config.json is not valid JSON: {exc}", file=str(cfg_path)) from exc
    try:
        return ModelConfig.from_hf_config(raw)
    except ValueError as exc:
        raise CheckpointError(str(exc), file=str(cfg_path)) from exc


def load_hf_dir(
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    quantize: str = "none",
) -> CausalLM:
    """Load a Hugging Face model directory (config.json + safetensors) into a CausalLM,
    quantising its projections on the way in (``build_model``'s ``quantize``)."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError("not a directory", file=str(root))
    config = read_hf_config(root)
    files = _weight_files(root)

    def tensors() -> Iterable[tuple[str, torch.Tensor]]:
        for file in files:
            for name, t in iter_safetensors(file, release_pages=True):
                origin[name] = str(file)
                yield name, t

    origin: dict[str, str] = {}
    try:
        return build_model(config, tensors(), dtype=dtype, device=device, source=origin,
                           quantize=quantize)
    except CheckpointError as exc:
        if exc.file is not None:
            raise
        # A missing tensor lives in no file: name the checkpoint itself.
        file = str(files[0]) if len(files) == 1 else str(root / "model.safetensors.index.json")
        raise CheckpointError(exc.detail, file=file, tensor=exc.tensor) from exc
