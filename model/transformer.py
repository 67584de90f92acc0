"""CausalLM: the decoder stack of every model family the engine runs (Jamba, Llama, Mistral, Qwen2).

Each layer is pre-norm with two residuals::

    h = h + mixer(mixer_norm(h))      mixer = Attention | MambaMixer   (LayerSpec.mixer)
    h = h + ffn(ffn_norm(h))          ffn   = MLP | MoE                 (LayerSpec.ffn)

then a final RMSNorm and the LM head (tied to the embedding when the config says so).

Contract (others build on it):
    model = CausalLM(config)
    logits = model(input_ids, cache=None, pad_mask=None)   # (B, L) -> (B, L, V) fp32
    logits = model(input_ids, cache, logits_to_keep=1)     # only the last position (B, 1, V)
    cache = model.new_cache(batch_size, max_len)           # HybridCache on the model's device/dtype

With a cache the call appends its L tokens after the ``cache.seq_len`` already there, so
prefill, chunked prefill and decode are the same call. ``pad_mask`` (B, L), True = real token,
supports LEFT-padded batches: pads are masked out of attention keys and zeroed out of the Mamba
inputs, and RoPE positions count real tokens only; once a row has had a real token it must not
receive padding again (right padding would decay the Mamba state). Too many tokens for the
cache or the model's context raise ``ContextLengthError`` before anything runs or is written.
An exception from inside the layers (out of memory, an interrupt) leaves the cache's Mamba
states undefined (``seq_len`` does not advance): take a ``cache.snapshot()`` first where that
matters.

A plain decode step (one token per row, at most 8 rows, fp32 on the CPU, no padding or sliding
window in the way) runs each attention + MLP layer (every Llama-family layer, and Jamba's
attention layers that have a dense MLP) as ONE ``kernels.decoder_layer_decode`` op over the
fused q|k|v and gate|up projections (``model.layers.fused``), and Jamba's Mamba mixers, MoE
blocks and the dense MLPs of its Mamba layers as one ``kernels.mamba_mixer_decode`` /
``kernels.moe_decode`` / ``kernels.mlp_decode`` op each (norm and residual included): per-op
Python dispatch, not arithmetic, was most of a small model's decode time, and half of the
hybrid's with quantised weights. With the C++ kernels, when every layer can run so, the whole
step (layers, final norm, LM head) is ONE call of a ``DecodePlan`` built from the same
arguments (:mod:`model.kernels.decode_plan`; 5% faster on the 300M Jamba, whose Python between
ops ran on caches the weights had just streamed through).

On CUDA a plain decode step (one token per row, no padding in the call, no gradient) replays a
CUDA graph recorded once per cache (:mod:`model.cuda_graph`, ``_decode_at_slot``): a small
model's step is a few hundred kernel launches, which Python issues slower than the GPU runs
them. ``model.cuda_graphs = False`` turns it off.

``CausalLM(config)`` leaves the weights uninitialised: build models with ``model.hf.build_model``
or ``model.hf.load_hf_dir`` (or the GGUF loader, which goes through ``build_model``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import cuda_graph, kernels
from model.attention import Attention, AttentionInputs, causal_mask, rope_cos_sin, rope_inv_freq
from model.cache import HybridCache, KVState, MambaState
from model.config import LayerSpec, ModelConfig
from model.errors import ContextLengthError
from model.layers import (
    MLP,
    Linear,
    MoE,
    RMSNorm,
    cached_by_identity,
    expert_projections,
    fused,
    note_change,
    projection_tensors,
)
from model.mamba import MambaMixer


class Block(nn.Module):
    def __init__(self, config: ModelConfig, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        d = config.hidden_size
        self.mixer_norm = RMSNorm(d, config.rms_norm_eps)
        self.mixer: Attention | MambaMixer = (
            Attention(config) if spec.mixer == "attention" else MambaMixer(config)
        )
        self.ffn_norm = RMSNorm(d, config.rms_norm_eps)
        self.ffn: MLP | MoE = (
            MoE(d, config.intermediate_size, config.num_experts, config.num_experts_per_tok)
            if spec.ffn == "moe"
            else MLP(d, config.intermediate_size, bias=config.mlp_bias)
        )

    def forward(
        self,
        h: torch.Tensor,
        attn: AttentionInputs,
        pad: torch.Tensor | None,
        state: MambaState | KVState | None,
    ) -> torch.Tensor:
        if (
            state is not None and h.shape[1] == 1 and h.shape[0] <= 8
            and h.device.type == "cpu" and h.dtype == torch.float32
        ):
            return self._decode(h, attn, pad, state)
        return self._ffn(self._mixer(h, attn, pad, state))

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # nn.Module's own
        note_change()  # .to()/.half() swap the tensors' data: re-check the cached decode args
        return super()._apply(fn, recurse)

    def _mixer(
        self, h: torch.Tensor, attn: AttentionInputs, pad: torch.Tensor | None,
        state: MambaState | KVState | None,
    ) -> torch.Tensor:
        x = self.mixer_norm(h)
        if isinstance(self.mixer, Attention):
            assert state is None or isinstance(state, KVState)
            return h + self.mixer(x, attn, state)
        assert state is None or isinstance(state, MambaState)
        return h + self.mixer(x, pad, state)

    def _ffn(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.ffn(self.ffn_norm(h))

    def _decode(
        self, h: torch.Tensor, attn: AttentionInputs, pad: torch.Tensor | None,
        state: MambaState | KVState,
    ) -> torch.Tensor:
        """A decode step (one fp32 CPU token per row) through the fused sublayer ops where the
        layer allows them, the modules elsewhere. (Like the other C++ kernels these ops have
        no backward; their references, ``kernels.use("ref")``, are differentiable.)"""
        if isinstance(state, KVState):
            if attn.mask is None and not attn.is_causal:
                step = self._decode_step()
                if step is not None:  # a plain decode step of a Llama-family layer: one op
                    cos, sin = attn.rope if attn.rope is not None else (None, None)
                    return kernels.decoder_layer_decode(
                        h, *step, state.k, state.v, attn.start, cos, sin
                    )
            h = self._mixer(h, attn, pad, state)
        else:
            mamba = self._mamba_step() if pad is None else None
            if mamba is None:
                h = self._mixer(h, attn, pad, state)
            else:
                norm, eps, in_proj, mixer, *weights = mamba
                h = kernels.mamba_mixer_decode(
                    h, norm, eps, in_proj, state.conv, state.ssm, *weights[:5], mixer._A(),
                    *weights[5:],
                )
        moe = self._moe_step()
        if moe is not None:
            ffn, norm, router, *stacks = moe
            return kernels.moe_decode(h, norm, self.ffn_norm.eps, router, ffn.top_k, *stacks)
        mlp = self._mlp_step()
        if mlp is None:
            return self._ffn(h)
        return kernels.mlp_decode(h, *mlp)

    def _plan_entries(self) -> list[tuple[str, tuple[object, ...]]] | None:
        """This layer as ``DecodePlan.add_*`` calls (method name, arguments) from the same cached
        arguments as :meth:`_decode`'s ops, or None when it cannot run as those ops."""
        mixer = self._modules["mixer"]
        if isinstance(mixer, Attention):
            step = self._decode_step()
            if step is None:
                return None
            return [("add_attention_layer", (*step, mixer.num_kv_heads, mixer.head_dim))]
        mamba = self._mamba_step()
        if mamba is None:
            return None
        norm, eps, in_proj, module, *weights = mamba
        assert isinstance(module, MambaMixer)
        entries: list[tuple[str, tuple[object, ...]]] = [
            ("add_mamba_mixer", (norm, eps, in_proj, *weights[:5], module.A_log, *weights[5:]))
        ]
        moe = self._moe_step()
        if moe is not None:
            ffn, ffn_norm, router, *stacks = moe
            assert isinstance(ffn, MoE)
            entries.append(("add_moe", (ffn_norm, self.ffn_norm.eps, router, ffn.top_k, *stacks)))
            return entries
        mlp = self._mlp_step()
        if mlp is None:
            return None
        return [*entries, ("add_mlp", mlp)]

    def _decode_step(self) -> tuple[object, ...] | None:
        """The weights ``kernels.decoder_layer_decode`` takes (norms, eps, then qkv, o, gate_up
        and down), or None when this layer is not attention + MLP or cannot be fused.

        Called for every layer of every token, so it reads the module tables directly (not
        through nn.Module's slow attribute lookup) and reuses its answer while the nine
        modules involved, and their weights, are the same objects; fused() rebuilds whatever
        changed (quantize_ replacing the projections, a loader assigning weights).
        """
        mods = self._modules
        mixer, ffn = mods["mixer"], mods["ffn"]
        if not isinstance(mixer, Attention) or not isinstance(ffn, MLP):
            return None

        def parts() -> list[nn.Module]:
            mm, fm = mixer._modules, ffn._modules
            return [mm["q_proj"], mm["k_proj"], mm["v_proj"], mm["o_proj"], fm["gate_proj"],
                    fm["up_proj"], fm["down_proj"], mods["mixer_norm"], mods["ffn_norm"]]

        return cached_by_identity(self, "_decode_step_args", parts, self._build_decode_step)

    def _build_decode_step(self) -> tuple[object, ...] | None:
        mixer, ffn = self.mixer, self.ffn
        assert isinstance(mixer, Attention) and isinstance(ffn, MLP)
        qkv = fused(mixer, ("q_proj", "k_proj", "v_proj"))
        gate_up = fused(ffn, ("gate_proj", "up_proj"))
        if qkv is None or gate_up is None:
            return None
        projections = [projection_tensors(m) for m in (qkv, mixer.o_proj, gate_up, ffn.down_proj)]
        if any(p is None for p in projections):
            return None
        return (self.mixer_norm.weight, self.ffn_norm.weight, self.mixer_norm.eps, *projections)

    def _mlp_step(self) -> tuple[object, ...] | None:
        """What ``kernels.mlp_decode`` takes besides h (norm weight, eps, gate|up and down), or
        None when the FFN is not a dense MLP or cannot be fused. Cached as in
        :meth:`_decode_step`."""
        ffn = self._modules["ffn"]
        if not isinstance(ffn, MLP):
            return None

        def parts() -> list[nn.Module]:
            fm = ffn._modules
            return [fm["gate_proj"], fm["up_proj"], fm["down_proj"], self._modules["ffn_norm"]]

        return cached_by_identity(self, "_mlp_step_args", parts, self._build_mlp_step)

    def _build_mlp_step(self) -> tuple[object, ...] | None:
        ffn = self.ffn
        assert isinstance(ffn, MLP)
        gate_up = fused(ffn, ("gate_proj", "up_proj"))
        if gate_up is None:
            return None
        projections = [projection_tensors(gate_up), projection_tensors(ffn.down_proj)]
        if any(p is None for p in projections):
            return None
        return (self.ffn_norm.weight, self.ffn_norm.eps, *projections)

    def _mamba_step(self) -> tuple[object, ...] | None:
        """What ``kernels.mamba_mixer_decode`` takes besides h and the states, with the mixer
        itself in A's place (``MambaMixer._A()`` is read at each call: it follows A_log), or
        None for another mixer. Cached as in :meth:`_decode_step`, with the mixer's own
        parameters (conv, A_log, D) added to the identity checked."""
        mixer = self._modules["mixer"]
        if not isinstance(mixer, MambaMixer):
            return None

        def parts() -> list[nn.Module | torch.Tensor]:
            mm = mixer._modules
            found: list[nn.Module | torch.Tensor] = [
                mm["in_proj"], mm["x_proj"], mm["dt_proj"], mm["out_proj"], mm["dt_layernorm"],
                mm["b_layernorm"], mm["c_layernorm"], self._modules["mixer_norm"],
            ]
            return found + [t for t in mixer._parameters.values() if t is not None]  # conv, A_log, D

        return cached_by_identity(self, "_mamba_step_args", parts, self._build_mamba_step)

    def _build_mamba_step(self) -> tuple[object, ...] | None:
        mixer = self.mixer
        assert isinstance(mixer, MambaMixer)
        in_proj, out_proj = projection_tensors(mixer.in_proj), projection_tensors(mixer.out_proj)
        if in_proj is None or out_proj is None or self.mixer_norm.eps != mixer.eps:
            return None
        return (
            self.mixer_norm.weight, mixer.eps, in_proj, mixer, mixer.conv_weight, mixer.conv_bias,
            mixer.x_proj.weight, mixer.dt_proj.weight, mixer.dt_proj.bias, mixer.D,
            mixer.dt_layernorm.weight, mixer.b_layernorm.weight, mixer.c_layernorm.weight,
            out_proj,
        )

    def _moe_step(self) -> tuple[object, ...] | None:
        """The MoE, then what ``kernels.moe_decode`` takes besides h, eps and k (read from the
        modules at each call): the norm weight, the router weight and the three expert stacks
        as flat projection lists. None for a dense MLP. Cached as in :meth:`_decode_step`: the
        identity checked covers every stack, a parameter or a ``model.quant.QuantExperts``."""
        ffn = self._modules["ffn"]
        if not isinstance(ffn, MoE):
            return None

        def parts() -> list[nn.Module | torch.Tensor]:
            found: list[nn.Module | torch.Tensor] = [ffn._modules["router"], self._modules["ffn_norm"]]
            for name in ("gate_proj", "up_proj", "down_proj"):
                stack = ffn._parameters.get(name)
                found.append(stack if stack is not None else ffn._modules[name])
            return found

        return cached_by_identity(self, "_moe_step_args", parts, self._build_moe_step)

    def _build_moe_step(self) -> tuple[object, ...] | None:
        ffn = self.ffn
        assert isinstance(ffn, MoE)
        router = ffn.router
        if not isinstance(router, nn.Linear) or router.bias is not None:
            return None
        stacks = [expert_projections(getattr(ffn, name), ffn.num_experts)
                  for name in ("gate_proj", "up_proj", "down_proj")]
        if any(s is None for s in stacks):
            return None
        return (ffn, self.ffn_norm.weight, router.weight, *stacks)


class Embedding(nn.Module):
    """A token embedding whose weight is left uninitialised (like the other parameters here).

    Not nn.Embedding: its normal_() init on the meta device pulls in ~900 Python modules
    (about 145 MB of RSS) the first time, a fixed cost on every load for nothing.
    """

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class CausalLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.kv_dtype: torch.dtype | None = None  # new_cache's default K/V dtype (None: dtype)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, spec) for spec in config.layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self._inv_freq: torch.Tensor | None = None  # RoPE table, built lazily on the right device
        # Plain decode steps on CUDA replay a CUDA graph per cache (model.cuda_graph); False
        # launches every kernel from Python instead.
        self.cuda_graphs = True

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # nn.Module's own
        note_change()  # .to()/.half() swap the tensors' data: re-check the cached decode args
        return super()._apply(fn, recurse)

    def _decode_plan(self) -> object | None:
        """The whole decode step as ONE C++ call (:mod:`model.kernels.decode_plan`), or None when
        a layer cannot run as the fused sublayer ops, or without the C++ kernels. Built once and
        kept like the layers' own cached arguments: rebuilt when any tensor it holds changed."""
        return cached_by_identity(self, "_decode_plan", self._plan_tensors, self._build_decode_plan)

    def _plan_layers(self) -> tuple[list[tuple[str, tuple[object, ...]]], list[torch.Tensor | None]] | None:
        entries: list[tuple[str, tuple[object, ...]]] = []
        for block in self.layers:
            found = block._plan_entries()
            if found is None:
                return None
            entries += found
        head = projection_tensors(self.lm_head)
        return None if head is None else (entries, head)

    def _plan_tensors(self) -> list[torch.Tensor]:
        """Every tensor the plan holds: a replaced one (quantize_, a loader) means a new plan."""
        found = self._plan_layers()
        flat: list[torch.Tensor] = [self.norm.weight]

        def walk(item: object) -> None:
            if isinstance(item, torch.Tensor):
                flat.append(item)
            elif isinstance(item, (list, tuple)):
                for part in item:
                    walk(part)

        if found is not None:
            walk([args for _, args in found[0]])
            walk(found[1])
        return flat

    def _build_decode_plan(self) -> object | None:
        found = self._plan_layers()
        if found is None:
            return None
        plan = kernels.new_decode_plan(self.config.hidden_size)
        if plan is None:  # the reference backend has no plan
            return None
        entries, head = found
        for method, args in entries:
            getattr(plan, method)(*args)
        plan.set_head(self.norm.weight, self.norm.eps, head)  # type: ignore[attr-defined]
        return plan

    def new_cache(
        self, batch_size: int, max_len: int, kv_dtype: torch.dtype | None = None
    ) -> HybridCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` tokens; ``kv_dtype``
        (default ``self.kv_dtype``, e.g. ``torch.float16``) keeps the K/V of attention layers in
        another dtype than the model's."""
        limit = self.config.max_position_embeddings
        if max_len > limit:
            raise ContextLengthError(max_len, limit, "the model's context window")
        return HybridCache(self.config, batch_size, max_len, dtype=self.dtype, device=self.device,
                           kv_dtype=kv_dtype or self.kv_dtype)

    def _positions(
        self, b: int, length: int, start: int, pad: torch.Tensor | None,
        cache: HybridCache | None,
    ) -> torch.Tensor:
        """RoPE positions (B, L): real tokens counted from 0 per row; pads get 0 (ignored)."""
        if pad is None and (cache is None or not cache.has_padding):
            return torch.arange(start, start + length, device=self.device).expand(b, length)
        before = cache.num_real[:, None] if cache is not None else 0
        real = torch.ones(b, length, dtype=torch.long, device=self.device) if pad is None else pad.long()
        return (before + real.cumsum(dim=1) - 1).clamp(min=0)

    def _rope_inv_freq(self) -> torch.Tensor:
        if self._inv_freq is None or self._inv_freq.device != self.device:
            self._inv_freq = rope_inv_freq(self.config).to(self.device)
        return self._inv_freq

    def _decode_at_slot(
        self, input_ids: torch.Tensor, cache: HybridCache, slot: torch.Tensor
    ) -> torch.Tensor:
        """One decode step with fixed shapes and no host sync, what a CUDA graph can record
        (:mod:`model.cuda_graph`): input_ids (B, 1) go to cache slot ``slot`` (a (1,) long
        tensor, = ``cache.seq_len``), attention runs over all ``max_len`` slots under a mask,
        RoPE positions are ``cache.num_real``. The caller writes the pad mask of the new slot
        first (``cache._write_mask``) and advances the cache after. Returns logits (B, 1, V) fp32."""
        keys = torch.arange(cache.max_len, device=slot.device)
        allowed = keys <= slot  # (S,)
        window = self.config.sliding_window
        if window is not None:
            allowed = allowed & (keys > slot - window)
        mask = (allowed & cache.pad_mask)[:, None, None, :]  # (B, 1, 1, S)
        rope = None
        if self.config.rope_theta is not None:
            rope = rope_cos_sin(self._rope_inv_freq(), cache.num_real[:, None], self.dtype)
        attn = AttentionInputs(start=-1, rope=rope, mask=mask, is_causal=False, slot=slot)
        h = self.embed_tokens(input_ids)  # (B, 1, D)
        for block, state in zip(self.layers, cache.layers, strict=True):
            h = block._ffn(block._mixer(h, attn, None, state))
        return self.lm_head(self.norm(h)).float()

    def _check(self, input_ids: torch.Tensor, cache: HybridCache | None,
               pad_mask: torch.Tensor | None, logits_to_keep: int | None) -> None:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(
                f"input_ids must be an integer tensor (B, L), got {input_ids.dtype} {tuple(input_ids.shape)}"
            )
        b, length = input_ids.shape
        if pad_mask is not None and (pad_mask.shape != input_ids.shape or pad_mask.dtype != torch.bool):
            raise ValueError(
                f"pad_mask must be a bool tensor shaped like input_ids {tuple(input_ids.shape)}, "
                f"got {pad_mask.dtype} {tuple(pad_mask.shape)}"
            )
        start = 0 if cache is None else cache.seq_len
        limit = self.config.max_position_embeddings
        if start + length > limit:
            raise ContextLengthError(start + length, limit, "the model's context window")
        if cache is not None:
            if cache.batch_size != b:
                raise ValueError(f"cache has batch size {cache.batch_size}, input_ids {b}")
            if start + length > cache.max_len:
                raise ContextLengthError(start + length, cache.max_len, "the cache (max_len)")
        if logits_to_keep is not None and logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
        if length and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")
        # Left padding only: within the call a pad never follows a real token, and a row
        # that already holds real tokens gets no more pads.
        if pad_mask is not None and (
            bool((pad_mask[:, 1:] < pad_mask[:, :-1]).any())
            or (cache is not None and bool(((cache.num_real > 0) & ~pad_mask.all(dim=1)).any()))
        ):
            raise ValueError("pad_mask must describe LEFT padding (pads before all real tokens)")

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: HybridCache | None = None,
        pad_mask: torch.Tensor | None = None,
        logits_to_keep: int | None = None,
    ) -> torch.Tensor:
        """input_ids (B, L) -> logits (B, L, V) fp32; see the module docstring for the cache.

        ``logits_to_keep=n`` returns only the last n positions (B, n, V): a prefill that only
        needs the next token skips the LM head for the rest (at 8k tokens and a 32k vocabulary
        that head alone is ~400 GFLOP and a 1 GiB fp32 tensor).
        """
        self._check(input_ids, cache, pad_mask, logits_to_keep)
        b, length = input_ids.shape
        if length == 0:
            return torch.zeros(b, 0, self.config.vocab_size, device=self.device)
        start = 0 if cache is None else cache.seq_len
        pad = pad_mask if pad_mask is not None and not bool(pad_mask.all()) else None
        if (
            cache is not None and length == 1 and pad is None and logits_to_keep != 0
            and self.cuda_graphs and self.device.type == "cuda" and not torch.is_grad_enabled()
        ):
            return cuda_graph.decode_step(self, cache, input_ids)

        rope = None
        if self.config.rope_theta is not None:
            rope = rope_cos_sin(self._rope_inv_freq(), self._positions(b, length, start, pad, cache),
                                self.dtype)
        if cache is not None:
            cache._write_mask(pad, length)
            key_real = cache.pad_mask[:, : start + length] if cache.has_padding else None
        else:
            key_real = pad
        mask, is_causal = causal_mask(start, length, key_real, self.config.sliding_window, self.device)
        attn = AttentionInputs(start=start, rope=rope, mask=mask, is_causal=is_causal)

        h = self.embed_tokens(input_ids)  # (B, L, D)
        if (
            cache is not None and length == 1 and b <= 8 and pad is None and mask is None
            and not is_causal and logits_to_keep != 0 and not torch.is_grad_enabled()
            and h.device.type == "cpu" and h.dtype == torch.float32
        ):
            plan = self._decode_plan()
            if plan is not None:  # a plain decode step: every layer, norm and head in one call
                cos, sin = rope if rope is not None else (None, None)
                states = [t for state in cache.layers for t in (
                    (state.conv, state.ssm) if isinstance(state, MambaState) else (state.k, state.v))]
                logits = plan.run(h, states, start, cos, sin)  # type: ignore[attr-defined]
                cache._advance(pad, length)
                return logits
        for i, block in enumerate(self.layers):
            h = block(h, attn, pad, None if cache is None else cache.layers[i])
        if cache is not None:
            cache._advance(pad, length)
        if logits_to_keep is not None:
            h = h[:, max(length - logits_to_keep, 0) :]  # (B, n, D)
        return self.lm_head(self.norm(h)).float()  # (B, L or n, V)
