"""Prefix-state cache: reuse the hybrid state of a prompt prefix seen before.

Agent frameworks send the same long prefix (system prompt, tool definitions, the conversation
so far) on every turn. A transformer engine can keep the KV rows of any prefix and slice them;
a hybrid one cannot slice its Mamba layers: their conv/SSM state is a fixed-size summary of
*all* tokens so far, valid only at the exact position it was taken. So this cache stores states
at chosen positions, and a request can resume from any of them whose tokens are a prefix of its
prompt:

- at **block boundaries** (every ``block_size`` tokens, aligned to the prefill chunks, so a
  cold prefill with the cache on computes exactly what it computes without it; see
  :func:`default_block_size`), and
- at **marked positions** inside a block: the ends of chat messages (``boundaries``) and the
  end of each prompt, where the next turn's prompt is most likely to branch.

Entries form a tree keyed by a hash chain: a block's key is ``H(parent key, its tokens)``, and
a partial ("tail") entry hangs off the block boundary it starts at. Each entry holds the KV rows
of its own span only (the rows before it live in its ancestors, so a long conversation is not
stored once per block), the Mamba states and the next-token logits at its end. Restoring
concatenates the chain's KV rows and takes the last entry's Mamba states; a prompt that is
entirely cached needs no forward pass at all (the stored logits give the first token).

Eviction is LRU bounded in bytes. A hit refreshes its whole chain, leaf first, so ancestors are
always more recent than their descendants and are never evicted from under them; evicting an
entry drops its descendants, which could no longer be restored.

Only unpadded single-sequence requests use the cache (a left-padded batch row has a different
state). ``stats`` counts hits and the tokens they saved, for usage reports and benchmarks.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from model.cache import CacheSnapshot, KVState, MambaState

if TYPE_CHECKING:
    from model.cache import HybridCache
    from model.transformer import CausalLM

__all__ = ["PrefixCache", "PrefixCacheStats", "PrefixMatch", "default_block_size"]

DEFAULT_BLOCK_SIZE = 1024  # = generate.PREFILL_CHUNK: cold prefills chunk exactly as without cache


def default_block_size(device: torch.device) -> int:
    """The block size for a model on ``device``: its prefill chunk (``generate.prefill_chunk``:
    1024 on the CPU, 8192 on a GPU), so that a cold prefill with the cache on runs the same
    calls as without it, and a GPU prefill is not cut into launch-bound 512-token calls."""
    from model.generate import prefill_chunk

    return prefill_chunk(device)
_ROOT = b""


@dataclass
class PrefixCacheStats:
    """Counters since the cache was made (or ``reset_stats``)."""

    requests: int = 0
    hits: int = 0  # requests that restored a cached prefix
    cached_tokens: int = 0  # prompt tokens restored instead of prefilled
    prefilled_tokens: int = 0  # prompt tokens run through the model
    inserted: int = 0
    evicted: int = 0
    entries: int = 0
    nbytes: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


@dataclass
class PrefixMatch:
    """The longest cached prefix of a prompt: ``length`` tokens, restorable from ``chain``."""

    length: int
    chain: list[_Entry] = field(default_factory=list)


@dataclass
class _Entry:
    key: bytes
    parent: bytes  # key of the block entry this span follows (_ROOT: starts at token 0)
    start: int
    tokens: tuple[int, ...]  # this entry's span
    kv: list[tuple[torch.Tensor, torch.Tensor] | None]  # per layer: (1, Hkv, span, hd) or None
    mamba: list[tuple[torch.Tensor, torch.Tensor] | None]  # per layer: conv, ssm at the end
    logits: torch.Tensor | None  # (V,) fp32 next-token logits after the span, if known
    is_block: bool
    nbytes: int = 0

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


def _key(parent: bytes, tokens: Sequence[int]) -> bytes:
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(torch.tensor(list(tokens), dtype=torch.int64).numpy().tobytes())
    return digest.digest()


class PrefixCache:
    """Snapshots of one model's hybrid state, keyed by token prefix, LRU within ``max_bytes``."""

    def __init__(
        self, max_bytes: int = 512 * 2**20, block_size: int = DEFAULT_BLOCK_SIZE, *, record: bool = True
    ) -> None:
        """``record=False``: only restore what was inserted (e.g. one stored conversation),
        never copy new snapshots during prefill."""
        if max_bytes <= 0 or block_size <= 0:
            raise ValueError(f"max_bytes and block_size must be positive, got {max_bytes}, {block_size}")
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.record = record
        self.stats = PrefixCacheStats()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._children: dict[bytes, set[bytes]] = {}  # parent key -> keys of entries after it
        self._lock = threading.Lock()
        self._config_hash: str | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def nbytes(self) -> int:
        return self.stats.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._children.clear()
            self.stats.entries = self.stats.nbytes = 0

    def reset_stats(self) -> None:
        self.stats = PrefixCacheStats(entries=self.stats.entries, nbytes=self.stats.nbytes)

    # ------------------------------------------------------------------------------ lookup

    def match(self, prompt: Sequence[int]) -> PrefixMatch:
        """The longest cached prefix of ``prompt`` (length 0 when none)."""
        with self._lock:
            return self._match(list(prompt))

    def _match(self, prompt: list[int]) -> PrefixMatch:
        best = PrefixMatch(0)
        chain: list[_Entry] = []
        parent, pos = _ROOT, 0
        while True:
            # Tails (and stored states) hanging off this boundary: the longest that fits.
            for key in self._children.get(parent, ()):
                e = self._entries[key]
                usable = e.end < len(prompt) or (e.end == len(prompt) and e.logits is not None)
                if not e.is_block and e.end > best.length and usable \
                        and prompt[pos : e.end] == list(e.tokens):
                    best = PrefixMatch(e.end, [*chain, e])
            block = prompt[pos : pos + self.block_size]
            if len(block) < self.block_size:
                break
            entry = self._entries.get(_key(parent, block))
            if entry is None or not entry.is_block:
                break
            chain.append(entry)
            parent, pos = entry.key, entry.end
            if pos > best.length:
                best = PrefixMatch(pos, list(chain))
        return best

    def _touch(self, entry: _Entry) -> None:
        """Make ``entry`` and its ancestors most recent, ancestors last (evicted after it)."""
        key: bytes = entry.key
        while key != _ROOT and key in self._entries:
            self._entries.move_to_end(key)
            key = self._entries[key].parent

    # ------------------------------------------------------------------------------ insert

    def _insert(self, entry: _Entry) -> None:
        if entry.key in self._entries:
            self._touch(self._entries[entry.key])
            return
        if entry.parent != _ROOT and entry.parent not in self._entries:
            return  # its ancestors were evicted meanwhile: it could never be restored
        entry.nbytes = _entry_nbytes(entry)
        if entry.nbytes > self.max_bytes:
            return
        self._entries[entry.key] = entry
        self._children.setdefault(entry.parent, set()).add(entry.key)
        self.stats.inserted += 1
        self.stats.entries += 1
        self.stats.nbytes += entry.nbytes
        self._touch(entry)
        while self.stats.nbytes > self.max_bytes and self._entries:
            oldest = next(iter(self._entries))
            self._evict(oldest)

    def _evict(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._children.get(entry.parent, set()).discard(key)
        self.stats.evicted += 1
        self.stats.entries -= 1
        self.stats.nbytes -= entry.nbytes
        for child in list(self._children.pop(key, ())):
            self._evict(child)

    def insert_snapshot(
        self, token_ids: Sequence[int], snapshot: CacheSnapshot, logits: torch.Tensor | None = None
    ) -> None:
        """Add a whole state (e.g. a stored conversation) as one entry from token 0.

        ``logits`` (V,) are the next-token logits after ``token_ids``; without them the entry
        serves only prompts that go on past it. The snapshot must be of one unpadded sequence;
        its tensors are kept, not copied.
        """
        if snapshot.batch_size != 1 or snapshot.has_padding:
            raise ValueError("only an unpadded single-sequence snapshot can seed the prefix cache")
        if snapshot.seq_len != len(token_ids):
            raise ValueError(
                f"snapshot holds {snapshot.seq_len} tokens but {len(token_ids)} token ids were given"
            )
        tokens = tuple(int(t) for t in token_ids)
        kv: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        mamba: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for s in snapshot.layers:
            kv.append((s.k, s.v) if isinstance(s, KVState) else None)
            mamba.append((s.conv, s.ssm) if isinstance(s, MambaState) else None)
        saved = None if logits is None else logits.detach().float().reshape(-1).clone()
        entry = _Entry(_key(_ROOT, tokens) + b"s", _ROOT, 0, tokens, kv, mamba, saved, is_block=False)
        with self._lock:
            self._check_model(snapshot.config_hash)
            self._insert(entry)

    def _check_model(self, config_hash: str) -> None:
        if self._config_hash is None:
            self._config_hash = config_hash
        elif self._config_hash != config_hash:
            raise ValueError(
                f"this prefix cache holds states of model {self._config_hash}, not {config_hash}; "
                "use one PrefixCache per model"
            )

    # ------------------------------------------------------------------------------ prefill

    def prefill(
        self,
        model: CausalLM,
        prompt: Sequence[int],
        max_len: int,
        boundaries: Sequence[int] = (),
        chunk: int | None = None,
    ) -> tuple[torch.Tensor, HybridCache, int]:
        """Run ``prompt`` into a fresh cache, reusing the longest cached prefix.

        Returns the last logits (1, V), the cache (ready to decode, ``max_len`` slots) and the
        number of prompt tokens restored rather than computed. Snapshots are recorded at block
        boundaries, at ``boundaries`` (e.g. message ends) and at the prompt's end. ``chunk``
        (default ``generate.prefill_chunk`` for the model's device) caps the tokens per call.
        """
        if chunk is None:
            from model.generate import prefill_chunk

            chunk = prefill_chunk(model.device)
        prompt = [int(t) for t in prompt]
        config_hash = model.config.config_hash()
        with self._lock:
            self._check_model(config_hash)
            found = self._match(prompt)
            if found.chain:
                self._touch(found.chain[-1])
        cache = model.new_cache(1, max_len)
        if found.length:
            cache.restore(_chain_snapshot(found.chain, config_hash))
        n = found.length
        self.stats.requests += 1
        self.stats.hits += bool(n)
        self.stats.cached_tokens += n
        self.stats.prefilled_tokens += len(prompt) - n
        if n == len(prompt):
            last = found.chain[-1].logits
            assert last is not None  # _match only takes a whole-prompt entry with logits
            return last[None].clone(), cache, n
        logits: torch.Tensor | None = None

        marks = {b for b in boundaries if n < b < len(prompt)} | {len(prompt)}
        ids = torch.tensor(prompt, dtype=torch.long, device=model.device)[None]  # (1, L)
        # The (block key, position) the next entry hangs off: the last block boundary <= n.
        parent, block_start = _ROOT, 0
        for e in found.chain:
            if e.is_block:
                parent, block_start = e.key, e.end
        pos = n
        while pos < len(prompt):
            next_block = (pos // self.block_size + 1) * self.block_size
            next_chunk = (pos // chunk + 1) * chunk
            end = min([next_block, next_chunk, len(prompt), *(m for m in marks if m > pos)])
            out = model(ids[:, pos:end], cache=cache, logits_to_keep=1)
            logits = out[:, -1, :]
            pos = end
            at_block = pos == block_start + self.block_size
            if self.record and (at_block or pos in marks):
                entry = _entry_from_cache(cache, parent, block_start, prompt[block_start:pos],
                                          logits[0], is_block=at_block)
                with self._lock:
                    self._insert(entry)
                if at_block:
                    parent, block_start = entry.key, pos
        assert logits is not None
        return logits, cache, n


def _entry_from_cache(cache: HybridCache, parent: bytes, start: int, tokens: Sequence[int],
                      logits: torch.Tensor, *, is_block: bool) -> _Entry:
    """Copy the span [start, start+len(tokens)) of a live single-sequence cache."""
    end = start + len(tokens)
    kv: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    mamba: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    with torch.inference_mode(False):  # normal tensors: restorable in any mode later
        for s in cache.layers:
            if isinstance(s, KVState):
                kv.append((s.k[:, :, start:end].clone(), s.v[:, :, start:end].clone()))
                mamba.append(None)
            else:
                kv.append(None)
                mamba.append((s.conv.clone(), s.ssm.clone()))
        saved = logits.detach().float().clone()
    key = _key(parent, tokens) + (b"" if is_block else b"t")
    return _Entry(key, parent, start, tuple(int(t) for t in tokens), kv, mamba, saved, is_block)


def _chain_snapshot(chain: list[_Entry], config_hash: str) -> CacheSnapshot:
    """One CacheSnapshot from a chain of entries: KV rows concatenated, last Mamba states."""
    last = chain[-1]
    layers: list[KVState | MambaState] = []
    for i, state in enumerate(last.mamba):
        if state is not None:
            layers.append(MambaState(state[0], state[1]))
        else:
            parts = [e.kv[i] for e in chain]
            assert all(p is not None for p in parts)
            k = torch.cat([p[0] for p in parts if p is not None], dim=2)
            v = torch.cat([p[1] for p in parts if p is not None], dim=2)
            layers.append(KVState(k, v))
    n = last.end
    first = layers[0]
    device = first.conv.device if isinstance(first, MambaState) else first.k.device
    return CacheSnapshot(
        config_hash=config_hash,
        seq_len=n,
        layers=layers,
        pad_mask=torch.ones(1, n, dtype=torch.bool, device=device),
        num_real=torch.tensor([n], dtype=torch.long, device=device),
        has_padding=False,
    )


def _entry_nbytes(entry: _Entry) -> int:
    total = 8 * len(entry.tokens) + (0 if entry.logits is None else entry.logits.nbytes)
    for pair in (*entry.kv, *entry.mamba):
        if pair is not None:
            total += pair[0].nbytes + pair[1].nbytes
    return total
