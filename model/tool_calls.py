"""Tool calls on the embedded model: render the tools, constrain the call, parse it back.

Open checkpoints call tools by writing text. Two formats matter:

- **native**: the checkpoint's chat template renders ``tools`` itself and the model was trained
  to answer ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes, Qwen 2.5/3,
  Jamba Reasoning 3B). We pass the tools to the template and parse that block.
- **generic**: the template ignores tools (SmolLM2's does). We describe the tools in the system
  message in the same Hermes layout — the most common tool format in open instruction data —
  and parse the same block; a reply that is one bare ``{"name", "arguments"}`` object counts too.

Constraint modes (``tool_choice``):

- ``"auto"``: free text; the grammar takes over from the moment the model writes ``<tool_call>``
  and then allows only a declared tool's name and arguments valid under its schema
  (llguidance's lazy-lexeme pattern: the text before the tag is matched lazily, so the tag
  itself is what switches the grammar on).
- ``"required"`` or a tool name: the whole reply is one tool call (of that tool).
- ``"none"``: no tools rendered, no grammar.

The call is a JSON object ``{"name": const, "arguments": <tool schema>}``, one variant per tool,
written the way ``json.dumps`` writes it (``", "``/``": "``, no free whitespace) — the form the
models saw most in training.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.grammar import Grammar

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ParsedOutput",
    "ToolCall",
    "generic_tools_prompt",
    "normalize_tools",
    "parse_tool_calls",
    "prepare_messages",
    "template_renders_tools",
    "tool_call_grammar",
    "tool_call_schema",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", ",
               "lenient": True}


@dataclass
class ToolCall:
    """One parsed call: the tool's name and its arguments (a JSON object)."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments)}}


@dataclass
class ParsedOutput:
    """A reply split into its prose (``content``, tool-call blocks removed) and its calls."""

    content: str
    tool_calls: list[ToolCall]


# ----------------------------------------------------------------------------------- tools


def normalize_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style tools (``{"type": "function", "function": {...}}``) or bare function dicts
    -> ``[{"name", "description", "parameters"}]``; names must be unique."""
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function", tool)
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tool {i} has no name: {tool!r}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        out.append({"name": name, "description": fn.get("description", ""), "parameters": dict(params)})
    names = [t["name"] for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"tool names must be unique, got {names}")
    return out


def template_renders_tools(template: str | None) -> bool:
    """Whether a chat template renders ``tools`` and the ``<tool_call>`` format itself."""
    return bool(template) and "tools" in template and TOOL_CALL_OPEN in template  # type: ignore[operator]


def generic_tools_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """The system-prompt text describing ``tools`` for a template that has no tool support."""
    lines = "\n".join(
        json.dumps({"type": "function", "function": t}) for t in normalize_tools(tools)
    )
    return (
        "You can call functions. The available functions are:\n<tools>\n"
        f"{lines}\n</tools>\n"
        "To call a function, reply with a JSON object holding its name and arguments inside "
        "<tool_call></tool_call> tags, like this:\n"
        '<tool_call>{"name": "function_name", "arguments": {"argument": "value"}}</tool_call>'
    )


def _call_text(call: Mapping[str, Any]) -> str:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        args = json.loads(args or "{}")
    return f'{TOOL_CALL_OPEN}{json.dumps({"name": fn["name"], "arguments": args})}{TOOL_CALL_CLOSE}'


def prepare_messages(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    *,
    native: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages and tools as the chat template should see them.

    ``native``: tools go to the template; assistant tool-call arguments become objects (the
    transformers convention). Otherwise the tools are described in the system message and
    earlier calls are written back as ``<tool_call>`` text, so the model sees its own format.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        msg = dict(m)
        calls = msg.get("tool_calls") or []
        if native:
            fixed = []
            for call in calls:
                call = dict(call)
                fn = dict(call.get("function", call))
                if isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.loads(fn["arguments"] or "{}")
                call["function"] = fn
                fixed.append(call)
            if calls:
                msg["tool_calls"] = fixed
        elif calls:
            text = "".join(_call_text(c) for c in calls)
            msg["content"] = ((msg.get("content") or "") + text).strip()
            msg.pop("tool_calls")
        if msg.get("content") is None:
            msg["content"] = ""
        out.append(msg)
    if not tools:
        return out, None
    if native:
        return out, [{"type": "function", "function": t} for t in normalize_tools(tools)]
    text = generic_tools_prompt(tools)
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{text}".strip()
    else:
        out.insert(0, {"role": "system", "content": text})
    return out, None


# --------------------------------------------------------------------------------- grammar


def tool_call_schema(tools: Sequence[Mapping[str, Any]], only: str | None = None) -> dict[str, Any]:
    """JSON schema of one call: any declared tool (or just ``only``), name and arguments."""
    specs = normalize_tools(tools)
    if only is not None:
        specs = [t for t in specs if t["name"] == only]
        if not specs:
            raise ValueError(f"tool_choice {only!r} names no declared tool")
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in specs
    ]
    schema: dict[str, Any] = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return {**schema, "x-guidance": _JSON_STYLE}


def tool_call_grammar(
    tools: Sequence[Mapping[str, Any]], tool_choice: str = "auto"
) -> Grammar:
    """The grammar for a reply under ``tool_choice`` ("auto", "required" or a tool name)."""
    if tool_choice == "none":
        raise ValueError("tool_choice 'none' has no tool-call grammar")
    only = None if tool_choice in ("auto", "required") else tool_choice
    schema = json.dumps(tool_call_schema(tools, only))
    call = f'call: call_open NL? %json {schema} NL? "{TOOL_CALL_CLOSE}"'
    if tool_choice == "auto":
        # Lazy head: any text, ending at the first "<tool_call>"; the JSON is constrained after.
        text = f"""
start: call* tail
tail: TEXT
TEXT: /(.|\\n)*/
call_open[lazy]: /(.|\\n)*{re.escape(TOOL_CALL_OPEN)}/
NL: "\\n"
{call}
"""
    else:
        text = f"""
start: call
call_open: "{TOOL_CALL_OPEN}"
NL: "\\n"
{call}
"""
    return Grammar.lark(text)


# --------------------------------------------------------------------------------- parsing


def _as_call(data: Any, names: set[str] | None) -> ToolCall | None:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    if names is not None and data["name"] not in names:
        return None
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(data["name"], args)


def parse_tool_calls(
    text: str, tools: Sequence[Mapping[str, Any]] | None = None
) -> ParsedOutput:
    """Tool calls in a reply: ``<tool_call>{...}</tool_call>`` blocks (an unclosed last block
    counts when its JSON is complete), or a reply that is one bare ``{"name", "arguments"}``
    object. Calls naming an undeclared tool (when ``tools`` is given) or with malformed JSON are
    left in the content, not returned."""
    names = {t["name"] for t in normalize_tools(tools)} if tools else None
    calls: list[ToolCall] = []
    content = text
    for match in _BLOCK.finditer(text):
        try:
            call = _as_call(json.loads(match.group(1)), names)
        except json.JSONDecodeError:
            call = None
        if call is not None:
            calls.append(call)
            content = content.replace(match.group(0), "", 1)
    if not calls:
        stripped = text.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            try:
                call = _as_call(json.loads(stripped), names)
            except json.JSONDecodeError:
                call = None
            if call is not None:
                return ParsedOutput("", [call])
    return ParsedOutput(content.strip(), calls)
