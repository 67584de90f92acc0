"""The loaded-model object: one checkpoint's network, tokenizer and chat template together.

    from model import load
    m = load("smollm2-135m-instruct")            # or a .gguf path / HF directory / repo id
    m.generate("Once upon a time", max_new_tokens=32).text
    for piece in m.stream("Tell me a joke", temperature=0.7, seed=1): print(piece, end="")
    m.chat([{"role": "user", "content": "What is the capital of France?"}]).text

Everything here is a thin layer over ``model.generate``: it turns text into token ids with the
checkpoint's tokenizer (chat prompts through its own template) and sampling keywords into a
``SamplingParams``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.generate import (
    GenerationResult,
    LogitsProcessor,
    SamplingParams,
    generate_batch,
    generate_stream,
)
from model.registry import Progress, resolve
from model.tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch

    from model.config import ModelConfig
    from model.transformer import CausalLM

__all__ = ["LanguageModel", "load"]

Prompt = str | Sequence[int]


class LanguageModel:
    """A model ready to generate: ``model`` (CausalLM), ``tokenizer``, ``config``, ``name``."""

    def __init__(self, model: CausalLM, tokenizer: Tokenizer, *, name: str, path: Path) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.path = path

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def __repr__(self) -> str:
        return f"LanguageModel({self.name!r}, dtype={self.model.dtype}, device={self.model.device})"

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

    # ----------------------------------------------------------------------------- generation

    def generate(
        self,
        prompt: Prompt,
        *,
        logits_processor: LogitsProcessor | None = None,
        **sampling: Any,
    ) -> GenerationResult:
        """Complete one prompt. Keywords: see ``SamplingParams`` (max_new_tokens, temperature,
        top_k, top_p, repetition_penalty, seed, stop, stop_token_ids)."""
        params = SamplingParams(**sampling)
        return generate_batch(
            self.model, self.tokenizer, [self.encode(prompt)], params, [logits_processor]
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
        return generate_batch(self.model, self.tokenizer, ids, params, logits_processors)

    def stream(
        self,
        prompt: Prompt,
        *,
        logits_processor: LogitsProcessor | None = None,
        result: list[GenerationResult] | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        """Yield text increments as they are decoded (safe for multi-byte characters and stop
        strings). Pass ``result=[]`` to receive the final ``GenerationResult``."""
        params = SamplingParams(**sampling)
        return generate_stream(
            self.model, self.tokenizer, self.encode(prompt), params, logits_processor, result
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
        ids = self.encode_chat(messages, tools, **dict(template_kwargs or {}))
        return self.generate(ids, logits_processor=logits_processor, **sampling)

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
        ids = self.encode_chat(messages, tools, **dict(template_kwargs or {}))
        return self.stream(ids, logits_processor=logits_processor, result=result, **sampling)


def load(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str = "float32",
    device: torch.device | str = "cpu",
    download: bool = True,
    progress: Progress | None = None,
) -> LanguageModel:
    """Load a model by registry name, .gguf path, HF directory or Hub repo id.

    ``None`` loads the default model (SmolLM2-135M-Instruct), pulling it on first use unless
    ``download=False``. GGUF tensors are dequantised to ``dtype``.
    """
    import torch

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name, got {dtype!r}")
    resolved = resolve(name_or_path, download=download, progress=progress)
    if progress:
        progress(f"loading {resolved.name}")
    if resolved.format == "gguf":
        from model.gguf import load_gguf

        network, gguf_file = load_gguf(resolved.path, torch_dtype, device)
        tokenizer = Tokenizer.from_gguf(gguf_file.metadata)
    else:
        from model.hf import load_hf_dir

        network = load_hf_dir(resolved.path, torch_dtype, device)
        tokenizer = Tokenizer.from_hf_dir(resolved.path)
    network.eval()
    return LanguageModel(network, tokenizer, name=resolved.name, path=resolved.path)

