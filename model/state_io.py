"""Storable model state: a cache snapshot as bytes, and back.

An assistant that talks to a user for weeks cannot re-read the whole conversation on every
turn; it stores the engine state after each turn and resumes from it. For a hybrid model that
state is small (the Mamba layers keep a fixed-size state; only the few attention layers grow),
which is the point of the architecture.

Layout: a safetensors file (``safetensors.torch.save``) — no pickle, so a stored state is data,
never code — with tensors

    layers.{i}.conv, layers.{i}.ssm     Mamba layer i: (B, ED, K-1) model dtype, (B, ED, N) fp32
    layers.{i}.k, layers.{i}.v          attention layer i: (B, Hkv, T, hd) model dtype
    pad_mask (B, T) bool, num_real (B,) int64, token_ids (T,) int64 (batch of one only)
    logits (V,) fp32                    optional: next-token logits after the last token

and string metadata: ``format`` ("maestro-hybrid-state"), ``format_version``, ``model_id``,
``config_hash``, ``dtype``, ``seq_len``, ``has_padding``, ``layer_kinds``.

Loading checks the format, version, config hash and dtype before touching a tensor and raises
``StateMismatchError`` (wrong model or dtype) or ``StateFormatError`` (not a state, a newer
format, damaged data) with both sides named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from model.cache import CacheSnapshot, KVState, LayerState, MambaState
from model.errors import ModelError

if TYPE_CHECKING:
    from model.transformer import CausalLM

__all__ = [
    "FORMAT_VERSION",
    "StateFormatError",
    "StateMismatchError",
    "StoredState",
    "snapshot_from_bytes",
    "snapshot_to_bytes",
]

FORMAT = "maestro-hybrid-state"
FORMAT_VERSION = 1


class StateFormatError(ModelError):
    """The bytes are not a stored state this engine can read (damaged, foreign, newer format)."""


class StateMismatchError(ModelError):
    """A stored state belongs to another model (config hash or model id) or another dtype."""


@dataclass
class StoredState:
    """A loaded state: the snapshot, the token ids it covers and, if stored, the next logits."""

    snapshot: CacheSnapshot
    token_ids: list[int]
    logits: torch.Tensor | None
    model_id: str

    @property
    def seq_len(self) -> int:
        return self.snapshot.seq_len


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def snapshot_to_bytes(
    snap: CacheSnapshot,
    model_id: str,
    token_ids: Sequence[int],
    *,
    dtype: torch.dtype | None = None,
    logits: torch.Tensor | None = None,
) -> bytes:
    """Serialise ``snap`` (one sequence, ``len(token_ids) == snap.seq_len``).

    ``dtype`` is the model's dtype (default: read from the snapshot's first conv/KV tensor).
    """
    if snap.batch_size != 1:
        raise ValueError(f"only single-sequence snapshots are stored, got batch size {snap.batch_size}")
    if len(token_ids) != snap.seq_len:
        raise ValueError(f"the snapshot holds {snap.seq_len} tokens, {len(token_ids)} token ids given")
    tensors: dict[str, torch.Tensor] = {}
    kinds = []
    for i, s in enumerate(snap.layers):
        if isinstance(s, MambaState):
            kinds.append("m")
            tensors[f"layers.{i}.conv"] = s.conv
            tensors[f"layers.{i}.ssm"] = s.ssm
        else:
            kinds.append("a")
            tensors[f"layers.{i}.k"] = s.k
            tensors[f"layers.{i}.v"] = s.v
    if dtype is None:
        first = snap.layers[0]
        dtype = first.conv.dtype if isinstance(first, MambaState) else first.k.dtype
    tensors["pad_mask"] = snap.pad_mask
    tensors["num_real"] = snap.num_real
    tensors["token_ids"] = torch.tensor([int(t) for t in token_ids], dtype=torch.int64)
    if logits is not None:
        tensors["logits"] = logits.detach().float().reshape(-1)
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_id": model_id,
        "config_hash": snap.config_hash,
        "dtype": _dtype_name(dtype),
        "seq_len": str(snap.seq_len),
        "has_padding": "1" if snap.has_padding else "0",
        "layer_kinds": "".join(kinds),
    }
    return bytes(st_save(cpu, metadata=metadata))


def _read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's metadata, read without loading tensors."""
    import json
    import struct

    if len(data) < 8:
        raise StateFormatError(f"a stored state has at least 8 bytes, got {len(data)}")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise StateFormatError("the stored state is truncated (header larger than the data)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFormatError(f"the stored state's header is not valid JSON: {exc}") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StateFormatError("these bytes are not a stored model state (no maestro state metadata)")
    return meta


def snapshot_from_bytes(
    data: bytes, model: CausalLM, *, model_id: str | None = None
) -> StoredState:
    """Load a stored state for ``model``; refuse one made by another model or dtype.

    ``model_id``, when given, must equal the stored id too (two checkpoints of one architecture
    share a config hash but not their weights).
    """
    meta = _read_metadata(data)
    version = int(meta.get("format_version", "0"))
    if version != FORMAT_VERSION:
        raise StateFormatError(
            f"stored state format version {version}; this engine reads version {FORMAT_VERSION}"
        )
    ours = model.config.config_hash()
    if meta["config_hash"] != ours:
        raise StateMismatchError(
            f"the stored state was made by model {meta['model_id']!r} (config hash "
            f"{meta['config_hash']}); this model has config hash {ours}"
        )
    if model_id is not None and meta["model_id"] != model_id:
        raise StateMismatchError(
            f"the stored state was made by model {meta['model_id']!r}, not {model_id!r}"
        )
    if meta["dtype"] != _dtype_name(model.dtype):
        raise StateMismatchError(
            f"the stored state holds {meta['dtype']} tensors; this model runs in "
            f"{_dtype_name(model.dtype)} (load the model with dtype={meta['dtype']!r})"
        )
    try:
        tensors = st_load(data)
    except SafetensorError as exc:
        raise StateFormatError(f"the stored state is damaged: {exc}") from exc
    kinds = meta["layer_kinds"]
    expected = "".join("m" if s.mixer == "mamba" else "a" for s in model.config.layers)
    if kinds != expected:  # cannot happen with equal config hashes unless the file was edited
        raise StateFormatError(f"stored layer kinds {kinds!r} do not match the model's {expected!r}")
    device = model.device
    try:
        layers: list[LayerState] = []
        for i, kind in enumerate(kinds):
            if kind == "m":
                layers.append(MambaState(tensors[f"layers.{i}.conv"].to(device),
                                         tensors[f"layers.{i}.ssm"].to(device)))
            else:
                layers.append(KVState(tensors[f"layers.{i}.k"].to(device),
                                      tensors[f"layers.{i}.v"].to(device)))
        seq_len = int(meta["seq_len"])
        snap = CacheSnapshot(
            config_hash=meta["config_hash"],
            seq_len=seq_len,
            layers=layers,
            pad_mask=tensors["pad_mask"].to(device),
            num_real=tensors["num_real"].to(device),
            has_padding=meta["has_padding"] == "1",
        )
        token_ids = [int(t) for t in tensors["token_ids"].tolist()]
    except KeyError as exc:
        raise StateFormatError(f"the stored state lacks the tensor {exc}") from exc
    if len(token_ids) != seq_len:
        raise StateFormatError(f"the stored state covers {seq_len} tokens but lists {len(token_ids)} ids")
    logits = tensors.get("logits")
    return StoredState(snap, token_ids, None if logits is None else logits.to(device), meta["model_id"])
