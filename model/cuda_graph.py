"""CUDA graphs for decode: a step is recorded once per cache and replayed as one launch.

A decode step of a small model on a GPU is a few hundred small kernels. Launched one at a time
from Python they take far longer than the GPU needs to run them: the step is bound by the host.
A CUDA graph records the launches once; each later step replays them with one call.

A recorded step must have fixed shapes, fixed addresses and no host sync.
``CausalLM._decode_at_slot`` is that step:

- it reads its tokens from a static buffer and writes its K/V at a cache slot read from a device
  tensor (``AttentionInputs.slot``);
- it attends over all ``max_len`` slots of the cache under a mask, not over the used slice. Size
  the cache to the work (``generate`` sizes it to prompt + budget); attention then reads at most
  twice what the plain step reads;
- RoPE positions come from ``cache.num_real`` on the device;
- the MoE picks its experts on the device (``kernels.expert_linear``).

A ``DecodeGraph`` belongs to one cache, since it reads and writes that cache's buffers, and
lives in ``cache.decode_graph``. Its first step runs the same code eagerly, which also compiles
the Triton kernels and builds the fused weights. The second step records the graph, then
replays it. It is recorded again when the model's weights were replaced (``.to()``,
``quantize_``, a loader: :func:`model.layers.note_change`), a Mamba layer's ``A_log`` was
written in place, or ``kernels.use()`` switched the CUDA backend. If recording fails (a layer
that syncs with the host, e.g. quantised MoE experts), the cache decodes eagerly from then on,
with one warning. Other in-place weight writes go to the memory the graph reads.

The step's logits are copied out of the graph's static output, so a caller may keep them.
``CausalLM.forward`` takes this path on CUDA for a plain decode step: one token per row, no
padding in the call, no gradient, and ``model.cuda_graphs`` true (the default). Set it to
False to launch every kernel as before, e.g. to profile the kernels one by one.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import TYPE_CHECKING

import torch

from model import kernels
from model.cache import HybridCache
from model.layers import cached_by_identity
from model.mamba import MambaMixer

if TYPE_CHECKING:
    from model.transformer import CausalLM

logger = logging.getLogger(__name__)


class DecodeGraph:
    """The decode step of ``model`` on ``cache``, recorded as a CUDA graph on its second call."""

    def __init__(self, model: CausalLM, cache: HybridCache) -> None:
        self.model = model
        # Weak: the cache holds this graph, and a cycle would keep a finished cache's GPU
        # buffers alive until Python's cycle collector happened to run.
        self._cache = weakref.ref(cache)
        self.ids = torch.zeros((cache.batch_size, 1), dtype=torch.long, device=model.device)
        self.slot = torch.zeros(1, dtype=torch.long, device=model.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's static output
        self.key: tuple[object, ...] | None = None  # what the graph was recorded against
        self.warm = False
        self.failed: str | None = None  # why recording failed; the steps then run eagerly
        self.recordings = 0  # how many times a graph was recorded (tests read it)
        self.record_seconds = 0.0  # wall time of the last recording (the bench reports it)
        self._mixers = [m for m in model.modules() if isinstance(m, MambaMixer)]

    def _key(self) -> tuple[object, ...]:
        weights = cached_by_identity(
            self.model, "_cuda_graph_weights",
            lambda: [*self.model.parameters(), *self.model.buffers()], object,
        )
        backend = kernels.active_backend(self.model.device)  # kernels.use() switched since?
        return (weights, backend, *(m.A_log._version for m in self._mixers))

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One decode step: input_ids (B, 1) -> logits (B, 1, V) fp32; advances the cache."""
        cache = self._cache()
        assert cache is not None, "the cache this graph belongs to is gone"
        self.ids.copy_(input_ids, non_blocking=True)
        self.slot.fill_(cache.seq_len)
        cache._write_mask(None, 1)
        key = self._key()
        # The first step runs eagerly, so lazy state (Triton compiles, fused weights) exists
        # before recording; a step that could not be recorded runs eagerly from then on.
        if self.warm and self.failed is None and (self.graph is None or key != self.key):
            self._record(cache, key)
        if self.graph is not None and self.logits is not None:
            self.graph.replay()
            logits = self.logits.clone()
        else:
            logits = self.model._decode_at_slot(self.ids, cache, self.slot)
        self.warm = True
        cache._advance(None, 1)
        return logits

    def _record(self, cache: HybridCache, key: tuple[object, ...]) -> None:
        self.graph, self.logits = None, None  # free the old graph's pool first
        started = time.perf_counter()
        try:
            graph = torch.cuda.CUDAGraph()
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                logits = self.model._decode_at_slot(self.ids, cache, self.slot)
        except RuntimeError as exc:  # e.g. a layer that syncs with the host (quantised experts)
            self.failed = f"{type(exc).__name__}: {exc}"
            logger.warning("decoding without a CUDA graph: recording the step failed (%s)",
                           self.failed)
            return
        self.graph, self.logits, self.key = graph, logits, key
        self.recordings += 1
        self.record_seconds = time.perf_counter() - started


def decode_step(model: CausalLM, cache: HybridCache, input_ids: torch.Tensor) -> torch.Tensor:
    """A decode step through ``cache``'s DecodeGraph (made on first use, remade for another
    model)."""
    graph = cache.decode_graph
    if not isinstance(graph, DecodeGraph) or graph.model is not model:
        graph = cache.decode_graph = DecodeGraph(model, cache)
    return graph.step(input_ids)
