"""The embedded hybrid Transformer–Mamba language model engine.

Usable on its own; never imports ``maestro``, ``tools`` or ``agents``::

    from model import load
    m = load()                                   # the default model, SmolLM2-135M-Instruct
    m.generate("The capital of France is", max_new_tokens=8).text
    m.chat([{"role": "user", "content": "Hi!"}], temperature=0.7, seed=0).text

Generation itself lives in the submodule ``model.generate`` (``generate_batch``,
``generate_stream``, ``SamplingParams``); ``LanguageModel.generate`` is the convenient door.

``import model`` is light: names are imported on first attribute access, so torch loads only
when a model, tokenizer or generation function is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.api import LanguageModel, load
    from model.config import LayerSpec, ModelConfig
    from model.errors import (
        CheckpointError,
        ContextLengthError,
        ModelError,
        UnsupportedArchitectureError,
    )
    from model.generate import GenerationResult, LogitsProcessor, SamplingParams, Usage
    from model.registry import list_cached, pull, resolve
    from model.tokenizer import StreamDecoder, Tokenizer
    from model.transformer import CausalLM

# public name -> defining module
_EXPORTS = {
    "CausalLM": "model.transformer",
    "CheckpointError": "model.errors",
    "ContextLengthError": "model.errors",
    "GenerationResult": "model.generate",
    "LanguageModel": "model.api",
    "LayerSpec": "model.config",
    "LogitsProcessor": "model.generate",
    "ModelConfig": "model.config",
    "ModelError": "model.errors",
    "SamplingParams": "model.generate",
    "StreamDecoder": "model.tokenizer",
    "Tokenizer": "model.tokenizer",
    "UnsupportedArchitectureError": "model.errors",
    "Usage": "model.generate",
    "list_cached": "model.registry",
    "load": "model.api",
    "pull": "model.registry",
    "resolve": "model.registry",
}

__all__ = [
    "CausalLM",
    "CheckpointError",
    "ContextLengthError",
    "GenerationResult",
    "LanguageModel",
    "LayerSpec",
    "LogitsProcessor",
    "ModelConfig",
    "ModelError",
    "SamplingParams",
    "StreamDecoder",
    "Tokenizer",
    "UnsupportedArchitectureError",
    "Usage",
    "list_cached",
    "load",
    "pull",
    "resolve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
