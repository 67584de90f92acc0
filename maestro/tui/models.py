"""``--model`` specs: which model the TUI talks to, and a loader that builds it off the UI.

A spec is one of:

- a registry name or a path (``smollm2-135m-instruct``, ``./jamba-dir``, ``model.gguf``):
  the embedded engine, ``maestro.llm.LocalModel`` (torch is imported and the weights read
  in a worker thread, so the window is usable before they are in memory);
- an ``http://`` or ``https://`` URL: any OpenAI-compatible server through
  ``maestro.llm.OpenAIModel``; ``URL#name`` picks the served model name;
- ``scripted:TEXT`` — a test hook: a model that answers every message with ``TEXT``
  (``\\n`` for newlines). The tmux smoke test uses it when the real engine cannot load;
  it never touches the network or any weights. It cannot write plans, so ``maestro tui``
  runs it without tools.
"""

from __future__ import annotations

from maestro.errors import UserError
from maestro.llm.base import Model
from maestro.messages import Message, ModelRequestOptions
from maestro.tui.services import ModelLoader

DEFAULT_MODEL = "smollm2-135m-instruct"
SCRIPTED_PREFIX = "scripted:"


def display_name(spec: str) -> str:
    """What the model status shows before the model is loaded."""
    if spec.startswith(SCRIPTED_PREFIX):
        return "scripted"
    if "#" in spec and spec.startswith(("http://", "https://")):
        return spec.split("#", 1)[1]
    return spec


def scripted_model(text: str) -> Model:
    """A model that always answers ``text`` — the ``scripted:`` test hook."""
    from maestro.testing import FunctionModel

    answer = text.replace("\\n", "\n")

    def reply(_messages: list[Message], _options: ModelRequestOptions) -> str:
        return answer

    return FunctionModel(reply, model_name="scripted")


def model_loader(spec: str) -> ModelLoader:
    """A zero-argument function that builds the model for ``spec`` (call it in a thread)."""

    def load() -> Model:
        if spec.startswith(SCRIPTED_PREFIX):
            return scripted_model(spec[len(SCRIPTED_PREFIX) :])
        if spec.startswith(("http://", "https://")):
            return _remote(spec)
        return _local(spec)

    return load


def _remote(spec: str) -> Model:
    try:
        from maestro.llm import OpenAIModel
    except ImportError as exc:
        raise UserError(
            "remote models need maestro.llm.openai, which is not installed in this build"
        ) from exc
    url, _, name = spec.partition("#")
    # Single-model servers (llama.cpp, vLLM with one model) accept any name.
    model: Model = OpenAIModel(name or "default", base_url=url)
    return model


def _local(spec: str) -> Model:
    try:
        from maestro.llm import LocalModel
    except ImportError as exc:
        raise UserError(
            f"the embedded engine (maestro.llm.local) is not installed in this build, so "
            f"{spec!r} cannot load; pass --model http://host:port/v1 for a remote model"
        ) from exc
    # Cheap: the weights load when the app awaits ``model.engine()`` (see MaestroApp), in a
    # worker thread, so the window is usable meanwhile.
    model: Model = LocalModel(None if spec == DEFAULT_MODEL else spec)
    return model


__all__ = ["DEFAULT_MODEL", "SCRIPTED_PREFIX", "display_name", "model_loader", "scripted_model"]
