"""The hybrid cache: everything a CausalLM needs to continue a batch of sequences.

Per Mamba layer a conv state (B, ED, K-1) holding the last K-1 conv *inputs* (model dtype) and
an SSM state (B, ED, N) in fp32; per attention layer a key and a value buffer
(B, Hkv, max_len, hd) preallocated once, so a decode step writes one slot and attends to the
used slice (no torch.cat, no re-materialisation). Plus the pad mask seen so far (B, max_len),
True for real tokens, and the number of real tokens per row (RoPE positions count only those).

The Mamba states are of fixed size whatever the context; only the attention layers grow, which
is why a Jamba cache is small per token (see ``bytes_per_token``).

Public API:
    HybridCache(config, batch_size, max_len, dtype, device)   usually via CausalLM.new_cache
    cache.seq_len, cache.max_len, cache.batch_size, cache.nbytes(), cache.bytes_per_token()
    cache.snapshot() -> CacheSnapshot    deep copy of the used part only
    cache.restore(snapshot)              the cache continues exactly where the snapshot was taken
    snapshot.nbytes(), snapshot.seq_len, snapshot.config_hash
    cache.reset()                        empty again, buffers kept

A later issue serialises snapshots; they are plain tensors plus ints to make that easy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import ModelConfig
from model.errors import ModelError


@dataclass
class MambaState:
    conv: torch.Tensor  # (B, ED, K-1) model dtype: the last K-1 inputs of the conv
    ssm: torch.Tensor  # (B, ED, N) fp32


@dataclass
class KVState:
    k: torch.Tensor  # (B, Hkv, max_len, hd)
    v: torch.Tensor  # (B, Hkv, max_len, hd)


LayerState = MambaState | KVState


@dataclass
class CacheSnapshot:
    """A detached copy of a cache's used part; restoring it into a cache of the same model works
    for any max_len >= seq_len."""

    config_hash: str
    seq_len: int
    layers: list[LayerState]  # KV tensors cut to (B, Hkv, seq_len, hd)
    pad_mask: torch.Tensor  # (B, seq_len) bool
    num_real: torch.Tensor  # (B,) long
    has_padding: bool

    @property
    def batch_size(self) -> int:
        return int(self.num_real.shape[0])

    def nbytes(self) -> int:
        return _tensors_nbytes(self.layers) + self.pad_mask.nbytes + self.num_real.nbytes


def _tensors_nbytes(layers: list[LayerState]) -> int:
    total = 0
    for s in layers:
        a, b = (s.conv, s.ssm) if isinstance(s, MambaState) else (s.k, s.v)
        total += a.nbytes + b.nbytes
    return total


class HybridCache:
    """Conv/SSM states for Mamba layers and preallocated KV buffers for attention layers."""

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        """``kv_dtype`` (default ``dtype``) is the attention layers' K/V dtype: ``torch.float16``
        halves the bytes a long-context decode step reads; attention widens them to ``dtype``."""
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"batch_size and max_len must be positive, got {batch_size}, {max_len}")
        if kv_dtype is not None and not kv_dtype.is_floating_point:
            raise ValueError(f"kv_dtype must be a floating-point dtype, got {kv_dtype}")
        with torch.inference_mode(False):
            self._allocate(config, batch_size, max_len, dtype, device, kv_dtype or dtype)

    def _allocate(self, config: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype,
                  device: torch.device | str, kv_dtype: torch.dtype) -> None:
        """Buffers are always normal tensors, never inference tensors: a cache made under
        torch.inference_mode() must still accept writes from a forward run under no_grad."""
        self.config_hash = config.config_hash()
        self.batch_size = batch_size
        self.max_len = max_len
        self.seq_len = 0
        kw = dict(device=device)
        ed, n, k = config.mamba_d_inner, config.mamba_d_state, config.mamba_d_conv
        kv_shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.layers: list[LayerState] = [
            MambaState(
                conv=torch.zeros(batch_size, ed, k - 1, dtype=dtype, **kw),
                ssm=torch.zeros(batch_size, ed, n, dtype=torch.float32, **kw),
            )
            if spec.mixer == "mamba"
            else KVState(
                k=torch.zeros(kv_shape, dtype=kv_dtype, **kw),
                v=torch.zeros(kv_shape, dtype=kv_dtype, **kw),
            )
            for spec in config.layers
        ]
        self.pad_mask = torch.ones(batch_size, max_len, dtype=torch.bool, **kw)
        self.num_real = torch.zeros(batch_size, dtype=torch.long, **kw)
        self.has_padding = False  # a Python flag so unpadded decode never syncs on the mask
        self.decode_graph: object | None = None  # a model.cuda_graph.DecodeGraph on CUDA

    # ------------------------------------------------------------------ accounting
    def nbytes(self) -> int:
        """Bytes held by the preallocated buffers (all of max_len, used or not)."""
        return _tensors_nbytes(self.layers) + self.pad_mask.nbytes + self.num_real.nbytes

    def bytes_per_token(self) -> int:
        """KV bytes one more token of context costs for the whole batch (the Mamba states don't grow)."""
        return sum(
            2 * s.k[:, :, :1].nbytes for s in self.layers if isinstance(s, KVState)
        )

    # ------------------------------------------------------------------ bookkeeping
    def _write_mask(self, pad: torch.Tensor | None, length: int) -> None:
        """Record the pad mask of the ``length`` tokens a forward call is adding, in the slots
        after ``seq_len`` (attention reads them as keys). Called before the layers run; slots
        past ``seq_len`` mean nothing until ``_advance`` commits them."""
        end = self.seq_len + length
        self.pad_mask[:, self.seq_len : end] = True if pad is None else pad
        if pad is not None:
            self.has_padding = True

    def _advance(self, pad: torch.Tensor | None, length: int) -> None:
        """Commit a finished forward call: the tokens count from now on."""
        self.num_real += length if pad is None else pad.sum(dim=1)
        self.seq_len += length

    def reset(self) -> None:
        for s in self.layers:
            if isinstance(s, MambaState):
                s.conv.zero_()
                s.ssm.zero_()
        self.pad_mask.fill_(True)
        self.num_real.zero_()
        self.has_padding = False
        self.seq_len = 0

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> CacheSnapshot:
        with torch.inference_mode(False):  # normal tensors, usable in any mode later
            return self._snapshot()

    def _snapshot(self) -> CacheSnapshot:
        n = self.seq_len
        layers: list[LayerState] = [
            MambaState(s.conv.clone(), s.ssm.clone())
            if isinstance(s, MambaState)
            else KVState(s.k[:, :, :n].clone(), s.v[:, :, :n].clone())
            for s in self.layers
        ]
        return CacheSnapshot(
            config_hash=self.config_hash,
            seq_len=n,
            layers=layers,
            pad_mask=self.pad_mask[:, :n].clone(),
            num_real=self.num_real.clone(),
            has_padding=self.has_padding,
        )

    def restore(self, snap: CacheSnapshot) -> None:
        """Overwrite this cache with ``snap``; checks first, so a refused snapshot changes nothing."""
        if snap.config_hash != self.config_hash:
            raise ModelError(
                f"cache snapshot belongs to another model (config hash {snap.config_hash}, "
                f"this model {self.config_hash})"
            )
        if snap.batch_size != self.batch_size:
            raise ModelError(
                f"cache snapshot has batch size {snap.batch_size}, this cache {self.batch_size}"
            )
        if snap.seq_len > self.max_len:
            raise ModelError(
                f"cache snapshot holds {snap.seq_len} tokens, more than this cache's "
                f"max_len {self.max_len}"
            )
        n = snap.seq_len
        for dst, src in zip(self.layers, snap.layers, strict=True):
            if isinstance(dst, MambaState):
                assert isinstance(src, MambaState)
                dst.conv.copy_(src.conv)
                dst.ssm.copy_(src.ssm)
            else:
                assert isinstance(src, KVState)
                dst.k[:, :, :n].copy_(src.k)
                dst.v[:, :, :n].copy_(src.v)
        self.pad_mask.fill_(True)
        self.pad_mask[:, :n].copy_(snap.pad_mask)
        self.num_real.copy_(snap.num_real)
        self.has_padding = snap.has_padding
        self.seq_len = n
