"""Render a conversation with the checkpoint's own Jinja chat template.

Why not write our own prompt format: every instruct checkpoint was trained on one exact string
layout, and the template shipped with it (``tokenizer_config.json`` ``chat_template`` or GGUF
``tokenizer.chat_template``) is the only authoritative description of it. We render it the way
``transformers``' ``apply_chat_template`` does, so a prompt built here is byte-identical to the one
the model card's examples produce:

- a sandboxed, immutable Jinja environment (templates from the Hub are untrusted code) with
  ``trim_blocks`` and ``lstrip_blocks`` on and the ``loopcontrols`` extension;
- ``tojson`` that does not HTML-escape and takes ``indent``/``separators``/``sort_keys``;
- globals ``raise_exception`` (a template's way to reject a conversation), ``strftime_now``,
  a restricted ``dict`` and a ``namespace`` that refuses dunder attributes;
- a no-op ``{% generation %}`` block (used by templates that mark assistant spans for training);
- the variables ``messages``, ``tools``, ``documents``, ``add_generation_prompt`` plus the special
  tokens (``bos_token``, ``eos_token``, ...) and any extra keyword the caller passes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from model.errors import ModelError

__all__ = ["ChatTemplateError", "render_chat_template"]

Message = Mapping[str, Any]


class ChatTemplateError(ModelError):
    """The chat template could not be rendered: it is missing, malformed, or rejected the input."""


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body unchanged.

    transformers uses the tag to find assistant spans for training masks; at inference it is
    transparent, and without the extension such templates would not even compile.
    """

    tags = {"generation"}  # noqa: RUF012 - jinja2's Extension API declares tags as a class set

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes '<', '>' and '&', which would change the prompt.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict(...)`` inside templates, without exposing the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore names (a path to interpreter internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates may not set underscore attributes on a namespace (got {name!r})"
            )


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template)


def _plain(value: Any) -> Any:
    """A deep copy made of dicts, lists and scalars, so the template cannot mutate caller data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):  # pydantic models at the framework's edge
        return _plain(value.model_dump())
    return value


def render_chat_template(
    template: str | None,
    messages: Sequence[Message],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str | None] | None = None,
    **extra: Any,
) -> str:
    """Render ``messages`` (dicts with ``role``/``content``, optionally ``tool_calls`` etc.).

    ``tools`` are JSON-schema dicts as in transformers (``{"type": "function", "function": {...}}``).
    ``special_tokens`` maps ``bos_token``/``eos_token``/... to their strings; ``extra`` keywords
    (e.g. ``enable_thinking``) are passed to the template unchanged.

    Raises ``ChatTemplateError`` when there is no template, when it does not compile, or when the
    template itself calls ``raise_exception`` (e.g. roles out of order).
    """
    if not template:
        raise ChatTemplateError(
            "this checkpoint has no chat template; pass a plain prompt to generate() instead of chat()"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise ChatTemplateError(f"message {i} must be a mapping with a 'role' key, got {message!r}")
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, Mapping):
            raise ChatTemplateError(f"tool {i} must be a JSON-schema mapping, got {type(tool).__name__}")
    try:
        compiled = _compile(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc} (line {exc.lineno})") from exc
    context: dict[str, Any] = {k: v for k, v in (special_tokens or {}).items()}
    context.update(_plain(extra))
    try:
        return compiled.render(
            messages=_plain(list(messages)),
            tools=_plain(list(tools)) if tools is not None else None,
            documents=_plain(list(documents)) if documents is not None else None,
            add_generation_prompt=add_generation_prompt,
            **context,
        )
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"the chat template rejected the conversation: {exc}") from exc
