"""The loaded-model object: one checkpoint's network, tokenizer and chat template together.

    from model import load
    m = load("smollm2-135m-instruct")            # or a .gguf path / HF directory / repo id
    m.generate("Once upon a time", max_new_tokens=32).text
    for piece in m.stream("Tell me a joke", temperature=0.7, seed=1): print(piece, end="")
    m.chat([{"role": "user", "content": "What is the capital of France?"}]).text

Everything here is a thin layer over ``model.generate``: it turns text into token ids with the
checkpoint's tokenizer (chat prompts through its own template) and sampling keywords into a
``SamplingParams``.

Reusable state (see ``model.prefix_cache`` and ``model.state_io``)::

    m.enable_prefix_cache(256 * 2**20)           # or load(..., prefix_cache_bytes=...)
    m.chat(messages).usage.cached_tokens         # prompt tokens restored, not prefilled
    blob = m.save_state(ids)                     # bytes: the state after ``ids``
    m.resume(blob, more_ids, max_new_tokens=32)  # continue without re-reading ``ids``

Tool calls (see ``model.tool_calls``)::

    r = m.chat_tools(messages, tools, tool_choice="auto")   # or "required" / a tool name
    r.tool_calls, r.content, r.result.finish_reason
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.generate import (
    GenerationResult,
    LogitsProcessor,
    SamplingParams,
    generate_batch,
    generate_stream,
)
from model.prefix_cache import PrefixCache, default_block_size
from model.registry import Progress, resolve
from model.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from model.config import ModelConfig
    from model.state_io import StoredState
    from model.tool_calls import ToolCall
    from model.transformer import CausalLM

__all__ = ["LanguageModel", "ToolChatResult", "load"]

Prompt = str | Sequence[int]


@dataclass
class ToolChatResult:
    """A reply under tools: its prose, the parsed calls, and the raw generation result."""

    content: str
    tool_calls: list[ToolCall]
    result: GenerationResult


class LanguageModel:
    """A model ready to generate: ``model`` (CausalLM), ``tokenizer``, ``config``, ``name``."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Tokenizer,
        *,
        name: str,
        path: Path,
        prefix_cache: PrefixCache | None = None,
        quantization: str = "none",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.prefix_cache = prefix_cache  # None: every prompt is prefilled from scratch
        self.quantization = quantization  # "none" | "int8" | "int4" | "bf16" (model.quant)

    @property
    def state_id(self) -> str:
        """What stored states are tagged with: the name, plus the quantisation when there is
        one (a quantised model computes slightly different states, so they do not mix)."""
        return self.name if self.quantization == "none" else f"{self.name}+{self.quantization}"

    def enable_prefix_cache(self, max_bytes: int = 512 * 2**20,
                            block_size: int | None = None) -> PrefixCache:
        """Reuse prompt-prefix states from now on, keeping at most ``max_bytes`` of them;
        ``block_size`` defaults to the model's prefill chunk (1024 on the CPU, 8192 on a GPU)."""
        self.prefix_cache = PrefixCache(max_bytes, block_size or default_block_size(self.model.device))
        return self.prefix_cache

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def __repr__(self) -> str:
        quant = "" if self.quantization == "none" else f", quantization={self.quantization!r}"
        return (
            f"LanguageModel({self.name!r}, dtype={self.model.dtype}, device={self.model.device}{quant})"
        )

    # ------------------------------------------------------------------------------- prompts

    def encode(self, prompt: Prompt) -> list[int]:
        """Ids for a text prompt (BOS added when the checkpoint asks), or ids passed through."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
            if not ids and self.tokenizer.bos_token_id is not None:
                ids = [self.tokenizer.bos_token_id]
            return ids
        return [int(t) for t in prompt]

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text the checkpoint's chat template makes of ``messages``."""
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, **template_kwargs
        )

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> list[int]:
        # The template writes its own special tokens, so the tokenizer must not add more
        # (transformers' apply_chat_template(tokenize=True) does the same).
        text = self.render_chat(messages, tools, **template_kwargs)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def message_boundaries(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        ids: Sequence[int],
        **template_kwargs: Any,
    ) -> list[int]:
        """Token positions in ``ids`` where the first and the last messages end.

        The prefix cache snapshots there: the first message (system prompt and tools) is what
        different conversations share, the last is where the next turn branches. Found by
        rendering the shorter conversation; a template that rejects it, or a tokenization that
        merges across the boundary, gives no position.
        """
        from model.chat_template import ChatTemplateError

        out: set[int] = set()
        for k in {1, len(messages) - 1, len(messages)}:
            if not 0 < k <= len(messages):
                continue
            try:
                text = self.render_chat(messages[:k], tools, add_generation_prompt=False, **template_kwargs)
            except ChatTemplateError:
                continue
            prefix = self.tokenizer.encode(text, add_special_tokens=False)
            if 0 < len(prefix) < len(ids) and list(ids[: len(prefix)]) == prefix:
                out.add(len(prefix))
        return sorted(out)

    def _chat_ids(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        template_kwargs: Mapping[str, Any] | None,
    ) -> tuple[list[int], list[int]]:
        kw = dict(template_kwargs or {})
        ids = self.encode_chat(messages, tools, **kw)
        bounds = self.message_boundaries(messages, tools, ids, **kw) if self.prefix_cache is not None else []
        return ids, bounds

    # ----------------------------------------------------------------------------- generation

    def generate(
        self,
        prompt: Prompt,
        *,
        logits_processor: LogitsProcessor | None = None,
        boundaries: Sequence[int] = (),
        **sampling: Any,
    ) -> GenerationResult:
        """Complete one prompt. Keywords: see ``SamplingParams`` (max_new_tokens, temperature,
        top_k, top_p, repetition_penalty, seed, stop, stop_token_ids). ``boundaries``: extra
        prompt positions for the prefix cache to snapshot at (e.g. message ends)."""
        params = SamplingParams(**sampling)
        return generate_batch(
            self.model, self.tokenizer, [self.encode(prompt)], params, [logits_processor],
            prefix_cache=self.prefix_cache, boundaries=boundaries,
        )[0]

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        logits_processors: Sequence[LogitsProcessor | None] | None = None,
        **sampling: Any,
    ) -> list[GenerationResult]:
        """Complete several prompts in one batch (left-padded); results in prompt order."""
        if isinstance(prompts, str):
            raise TypeError("generate_batch takes a list of prompts; use generate() for one")
        params = SamplingParams(**sampling)
        ids = [self.encode(p) for p in prompts]
        return generate_batch(
            self.model, self.tokenizer, ids, params, logits_processors, prefix_cache=self.prefix_cache
        )

    def stream(
        self,
        prompt: Prompt,
        *,
        logits_processor: LogitsProcessor | None = None,
        result: list[GenerationResult] | None = None,
        boundaries: Sequence[int] = (),
        **sampling: Any,
    ) -> Iterator[str]:
        """Yield text increments as they are decoded (safe for multi-byte characters and stop
        strings). Pass ``result=[]`` to receive the final ``GenerationResult``."""
        params = SamplingParams(**sampling)
        return generate_stream(
            self.model, self.tokenizer, self.encode(prompt), params, logits_processor, result,
            prefix_cache=self.prefix_cache, boundaries=boundaries,
        )

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        template_kwargs: Mapping[str, Any] | None = None,
        logits_processor: LogitsProcessor | None = None,
        **sampling: Any,
    ) -> GenerationResult:
        """Answer a conversation (the assistant's next message) through the chat template."""
        ids, bounds = self._chat_ids(messages, tools, template_kwargs)
        return self.generate(ids, logits_processor=logits_processor, boundaries=bounds, **sampling)

    def chat_stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        template_kwargs: Mapping[str, Any] | None = None,
        logits_processor: LogitsProcessor | None = None,
        result: list[GenerationResult] | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        """``chat`` as a stream of text increments."""
        ids, bounds = self._chat_ids(messages, tools, template_kwargs)
        return self.stream(
            ids, logits_processor=logits_processor, result=result, boundaries=bounds, **sampling
        )

    # ---------------------------------------------------------------------------- tool calls

    def tool_call_format(self) -> str:
        """"native" when the chat template renders tools itself, else "generic"."""
        from model.tool_calls import template_renders_tools

        return "native" if template_renders_tools(self.tokenizer.chat_template) else "generic"

    def chat_tools(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        *,
        tool_choice: str = "auto",
        constrained: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> ToolChatResult:
        """Answer with text or tool calls (see ``model.tool_calls``).

        ``tool_choice``: "auto" (text, or a call once the model opens one), "required" (one
        call), a tool's name (one call of it) or "none". ``constrained``: decode the calls under
        a grammar of the tools' schemas (off: free text, parsed afterwards).
        """
        from model.grammar import GrammarProcessor
        from model.tool_calls import (
            ParsedOutput,
            parse_tool_calls,
            prepare_messages,
            tool_call_grammar,
        )

        use_tools = tool_choice != "none" and bool(tools)
        native = self.tool_call_format() == "native"
        msgs, template_tools = prepare_messages(messages, tools if use_tools else None, native=native)
        ids, bounds = self._chat_ids(msgs, template_tools, template_kwargs)
        processor = None
        if use_tools and constrained:
            grammar = tool_call_grammar(tools, tool_choice)
            processor = GrammarProcessor.for_tokenizer(self.tokenizer, grammar, self.config.vocab_size)
        result = self.generate(ids, logits_processor=processor, boundaries=bounds, **sampling)
        parsed = parse_tool_calls(result.text, tools) if use_tools else ParsedOutput(result.text, [])
        return ToolChatResult(parsed.content, parsed.tool_calls, result)

    # ------------------------------------------------------------------------- stored state

    def prefill_state(self, prompt: Prompt) -> StoredState:
        """The state after ``prompt`` (through the prefix cache when it is on)."""
        import torch

        from model.generate import _prefill
        from model.state_io import StoredState

        ids = self.encode(prompt)
        with torch.inference_mode():
            if self.prefix_cache is not None:
                logits, cache, _ = self.prefix_cache.prefill(self.model, ids, len(ids))
            else:
                pad = self.tokenizer.pad_token_id or 0
                logits, cache = _prefill(self.model, [ids], len(ids), pad)
        return StoredState(cache.snapshot(), ids, logits[0].clone(), self.state_id)

    def save_state(self, prompt: Prompt | StoredState) -> bytes:
        """Bytes holding the state after ``prompt`` (see ``model.state_io``)."""
        from model.state_io import StoredState, snapshot_to_bytes

        state = prompt if isinstance(prompt, StoredState) else self.prefill_state(prompt)
        return snapshot_to_bytes(
            state.snapshot, self.state_id, state.token_ids, dtype=self.model.dtype, logits=state.logits
        )

    def load_state(self, data: bytes) -> StoredState:
        """A stored state for this model; refuses one of another model or dtype."""
        from model.state_io import snapshot_from_bytes

        return snapshot_from_bytes(data, self.model, model_id=self.state_id)

    def resume(
        self,
        state: StoredState | bytes,
        continuation: Prompt = (),
        *,
        logits_processor: LogitsProcessor | None = None,
        **sampling: Any,
    ) -> GenerationResult:
        """Generate after a stored state plus ``continuation`` (text is encoded without special
        tokens), prefilling only the continuation. ``usage.prompt_tokens`` counts the whole
        history; ``usage.cached_tokens`` the part restored from the state."""
        loaded = self.load_state(state) if isinstance(state, bytes) else state
        more = (
            self.tokenizer.encode(continuation, add_special_tokens=False)
            if isinstance(continuation, str) else [int(t) for t in continuation]
        )
        if not more and loaded.logits is None:
            raise ValueError("this stored state has no next-token logits; pass a continuation")
        cache = self.prefix_cache if self.prefix_cache is not None else PrefixCache(
            2**62, default_block_size(self.model.device), record=False)
        cache.insert_snapshot(loaded.token_ids, loaded.snapshot, loaded.logits)
        params = SamplingParams(**sampling)
        return generate_batch(
            self.model, self.tokenizer, [loaded.token_ids + more], params, [logits_processor],
            prefix_cache=cache,
        )[0]


def load(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str = "float32",
    device: torch.device | str = "cpu",
    download: bool = True,
    progress: Progress | None = None,
    prefix_cache_bytes: int = 0,
    quantize: str = "none",
    kv_dtype: torch.dtype | str | None = None,
) -> LanguageModel:
    """Load a model by registry name, .gguf path, HF directory or Hub repo id.

    ``None`` loads the default model (SmolLM2-135M-Instruct), pulling it on first use unless
    ``download=False``. GGUF tensors are dequantised to ``dtype``. ``prefix_cache_bytes > 0``
    turns the prefix-state cache on with that budget. ``quantize="int8"|"int4"`` stores the
    linear weights as int8 per row or 4-bit groups (``model.quant``): decode reads 4x/6x fewer
    weight bytes, at a small cost in accuracy; ``"bf16"`` stores them in bf16 (exact for a bf16
    checkpoint) and computes in ``dtype``: half the bytes of fp32, without the emulated bf16
    matmul of CPUs that lack AVX512-BF16/AMX; ``"none"`` keeps ``dtype``. ``kv_dtype="float16"``
    keeps the attention layers' K/V cache in half precision: half the memory per token of
    context, and long-context decode reads half the cache bytes.
    """
    import torch

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name, got {dtype!r}")
    kv_torch_dtype = getattr(torch, kv_dtype, None) if isinstance(kv_dtype, str) else kv_dtype
    if kv_dtype is not None and not (
        isinstance(kv_torch_dtype, torch.dtype) and kv_torch_dtype.is_floating_point
    ):
        raise ValueError(f"kv_dtype must be a floating-point torch dtype or its name, got {kv_dtype!r}")
    from model.quant import MODES, native_bf16

    if quantize not in MODES:
        raise ValueError(f"unknown quantisation {quantize!r}; choose one of {', '.join(MODES)}")
    if torch_dtype == torch.bfloat16 and torch.device(device).type == "cpu" and not native_bf16():
        logger.warning(
            "dtype=bfloat16 on a CPU without native bf16 matmul (no avx512_bf16 or amx_bf16): "
            "PyTorch emulates it, 60-80x slower than float32. For bf16 weights with float32 "
            "arithmetic, load with dtype='float32', quantize='bf16'."
        )
    resolved = resolve(name_or_path, download=download, progress=progress)
    if progress:
        progress(f"loading {resolved.name}" + (f", quantising to {quantize}" if quantize != "none" else ""))
    # Each projection is quantised as it is loaded: the float model is never whole in memory.
    if resolved.format == "gguf":
        from model.gguf import load_gguf

        network, gguf_file = load_gguf(resolved.path, torch_dtype, device, quantize=quantize)
        tokenizer = Tokenizer.from_gguf(gguf_file.metadata)
    else:
        from model.hf import load_hf_dir

        network = load_hf_dir(resolved.path, torch_dtype, device, quantize=quantize)
        tokenizer = Tokenizer.from_hf_dir(resolved.path)
    network.eval()
    network.kv_dtype = kv_torch_dtype
    cache = (PrefixCache(prefix_cache_bytes, default_block_size(network.device))
             if prefix_cache_bytes > 0 else None)
    return LanguageModel(
        network, tokenizer, name=resolved.name, path=resolved.path, prefix_cache=cache,
        quantization=quantize,
    )

