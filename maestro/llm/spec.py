"""Model specs: one string names any model Maestro can talk to.

``resolve_model(spec)`` is what ``--model`` means everywhere (``maestro run``, ``maestro
chat``, the TUI, ``Agent(model="...")``). A spec is one of:

- ``None``, ``"default"`` or ``"smollm2-135m-instruct"``: the embedded default model;
- a registry name, a ``.gguf`` file or a checkpoint directory: the embedded engine,
  :class:`maestro.llm.LocalModel` (cheap to build: the weights load on the first request, or
  when the caller awaits ``model.engine()``);
- an ``http://`` or ``https://`` base URL of any OpenAI-compatible server:
  :class:`maestro.llm.OpenAIModel`; ``URL#name`` picks the served model name, and the API key
  comes from ``MAESTRO_API_KEY`` or else ``OPENAI_API_KEY``;
- ``scripted:TEXT``: a test hook, a model that answers every request with ``TEXT`` (``\\n``
  for newlines); it never touches the network or any weights;
- an existing :class:`~maestro.llm.base.Model`, returned as is.

Bad specs fail here, with a message saying what was wrong: a URL without a host, a scheme
other than http(s), a path that looks like a file but does not exist. Whether a bare name is
in the engine's registry is only known to the engine, so that error arrives when the model
loads (``maestro run`` loads it first, to fail before any work is done).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from maestro.errors import UserError
from maestro.llm.base import Model
from maestro.messages import Message, ModelRequestOptions

DEFAULT_MODEL = "smollm2-135m-instruct"
SCRIPTED_PREFIX = "scripted:"
API_KEY_VARIABLES = ("MAESTRO_API_KEY", "OPENAI_API_KEY")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_remote(spec: str) -> bool:
    """True for an ``http(s)://`` spec (an OpenAI-compatible server)."""
    return spec.startswith(("http://", "https://"))


def display_name(spec: str) -> str:
    """A short name for a spec, before the model is built (status lines, progress)."""
    if spec.startswith(SCRIPTED_PREFIX):
        return "scripted"
    if is_remote(spec) and "#" in spec:
        return spec.split("#", 1)[1]
    return spec


def scripted_model(text: str) -> Model:
    """A model that always answers ``text`` — the ``scripted:`` test hook."""
    from maestro.testing import FunctionModel

    answer = text.replace("\\n", "\n")

    def reply(_messages: list[Message], _options: ModelRequestOptions) -> str:
        return answer

    return FunctionModel(reply, model_name="scripted")


def api_key_from_env() -> str | None:
    """The API key for remote models: ``MAESTRO_API_KEY``, else ``OPENAI_API_KEY``."""
    for name in API_KEY_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return None


def resolve_model(spec: str | Model | None) -> Model:
    """The model a spec names (see the module docstring); raises ``UserError`` for bad specs."""
    if isinstance(spec, Model):
        return spec
    if spec is not None and not isinstance(spec, str):
        raise UserError(f"a model spec is a string or a Model, not {type(spec).__name__}")
    text = (spec or "").strip()
    if text in ("", "default", DEFAULT_MODEL):
        return _local(None)
    if text.startswith(SCRIPTED_PREFIX):
        return scripted_model(text[len(SCRIPTED_PREFIX) :])
    scheme = _SCHEME.match(text)
    if scheme or text.lower().startswith(("http:", "https:")):
        if scheme is None or scheme.group(1).lower() not in ("http", "https"):
            raise UserError(
                f"model URL {text!r}: only http:// and https:// base URLs of "
                "OpenAI-compatible servers are supported (e.g. http://localhost:8000/v1)"
            )
        return _remote(text)
    return _local(_checked_path(text))


def _checked_path(text: str) -> str:
    """``text`` if it can name a model; a path-like spec must exist."""
    path = Path(text).expanduser()
    looks_like_path = (
        text.startswith((".", "/", "~"))
        or text.lower().endswith(".gguf")
        or text.count("/") > 1  # owner/name is a Hub repo id; more slashes is a path
    )
    if looks_like_path and not path.exists():
        raise UserError(
            f"model {text!r}: no such file or directory (give a .gguf file, a checkpoint "
            "directory, a registry name such as smollm2-135m-instruct, or an http(s) URL)"
        )
    return str(path) if path.exists() else text


def _remote(text: str) -> Model:
    url, _, name = text.partition("#")
    parts = urlsplit(url)
    if not parts.hostname:
        raise UserError(f"model URL {text!r} has no host (e.g. http://localhost:8000/v1)")
    try:
        _ = parts.port
    except ValueError as exc:
        raise UserError(f"model URL {text!r}: bad port ({exc})") from exc
    from maestro.llm.openai import OpenAIModel

    # Single-model servers (llama.cpp, vLLM with one model) accept any name.
    return OpenAIModel(name or "default", base_url=url, api_key=api_key_from_env() or "")


def _local(name_or_path: str | None) -> Model:
    from maestro.llm.local import LocalModel

    return LocalModel(name_or_path)


__all__ = [
    "API_KEY_VARIABLES",
    "DEFAULT_MODEL",
    "SCRIPTED_PREFIX",
    "api_key_from_env",
    "display_name",
    "is_remote",
    "resolve_model",
    "scripted_model",
]
